//! `ModelEngine` on the embedded demo model (the tiny model `chatglm serve` uses without `--model`).

use std::ops::ControlFlow;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use chatglm_model::{ChatGlm, ComputeDtype, DeviceSpec};
use chatglm_serve::{ChatEngine, Conversation, GenerateRequest, ModelEngine, SamplingParams};

fn demo_engine() -> ModelEngine {
    let dir = chatglm_ptuning::demo::demo_model_dir().expect("demo model");
    let model = ChatGlm::load(&dir, DeviceSpec::Cpu, ComputeDtype::F32).expect("load");
    ModelEngine::new(model, "chatglm-demo", Vec::new()).expect("engine")
}

/// The server counts prompt tokens on its async threads while validating a request: that must
/// not wait for the generation that holds the model.
#[test]
fn counting_a_prompt_does_not_wait_for_a_running_generation() {
    let engine = Arc::new(demo_engine());
    let conversation = Conversation {
        query: "你好，请介绍一下你自己。".into(),
        ..Conversation::default()
    };
    let request = GenerateRequest {
        model: "chatglm-demo".into(),
        conversation: conversation.clone(),
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        max_new_tokens: 16,
    };
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let generation = {
        let engine = Arc::clone(&engine);
        std::thread::spawn(move || {
            let mut first = true;
            engine.generate(&request, &mut |_| {
                if first {
                    first = false;
                    let _ = started_tx.send(());
                    let _ = release_rx.recv();
                }
                ControlFlow::Continue(())
            })
        })
    };
    started_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the generation streams a first piece");
    // The generation is now paused inside its first token callback.
    let (count_tx, count_rx) = mpsc::channel();
    {
        let engine = Arc::clone(&engine);
        let conversation = conversation.clone();
        std::thread::spawn(move || {
            let _ = count_tx.send(engine.count_prompt_tokens("chatglm-demo", &conversation));
        });
    }
    let counted = count_rx.recv_timeout(Duration::from_secs(10));
    let _ = release_tx.send(());
    let prompt_tokens = counted
        .expect("count_prompt_tokens waited for the running generation")
        .expect("count");
    let completion = generation.join().expect("join").expect("generate");
    assert_eq!(completion.prompt_tokens, prompt_tokens);
    assert!(completion.completion_tokens > 0);
}
