//! Chat prompts, `process_response` and streaming decode against the original Python code.

use chatglm_tokenizer::chat::{process_response_v1, process_response_v3};
use chatglm_tokenizer::{DecodeStream, Message, OrderedJson, Reply, Role, Tokenizer};
use serde_json::Value;

fn fixture(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenizers")
        .join(path)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn prompts() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("chat_prompts.json")).unwrap()).unwrap()
}

fn pairs(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_owned(),
                p[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn v1_and_v2_prompts_match_chat() {
    let all = prompts();
    let mut checked = 0;
    for (version, dir) in [("v1", "v1"), ("v2", "v2")] {
        let tok = Tokenizer::from_dir(fixture(dir)).unwrap();
        for (name, case) in all[version].as_object().unwrap() {
            let Some(query) = case.get("query").and_then(Value::as_str) else {
                continue;
            };
            let history = pairs(&case["history"]);
            let prompt = tok.build_prompt(query, &history);
            assert_eq!(
                prompt,
                case["prompt"].as_str().unwrap(),
                "{version} {name} prompt"
            );
            assert_eq!(
                tok.build_prompt_ids(query, &history),
                ids(&case["input_ids"]),
                "{version} {name} ids"
            );
            if let Some(stream) = case.get("build_stream_inputs") {
                assert_eq!(
                    tok.build_turn_continuation_v2(query, history.len()),
                    ids(&stream["input_ids"])
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 3);
}

#[test]
fn v1_process_response_matches() {
    let all = prompts();
    let cases = all["v1"]["process_response"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        assert_eq!(
            process_response_v1(case["in"].as_str().unwrap()),
            case["out"].as_str().unwrap()
        );
    }
}

#[test]
fn v3_chat_inputs_match_build_chat_input() {
    let all = prompts();
    let tok = Tokenizer::from_dir(fixture("v3")).unwrap();
    let mut checked = 0;
    for (name, case) in all["v3"].as_object().unwrap() {
        if name == "build_single_message" {
            for m in case.as_array().unwrap() {
                let role: Role = serde_json::from_value(m["role"].clone()).unwrap();
                let got = tok
                    .build_single_message(
                        role,
                        m["metadata"].as_str().unwrap(),
                        m["message"].as_str().unwrap(),
                    )
                    .unwrap();
                assert_eq!(got, ids(&m["ids"]), "single message {m}");
                checked += 1;
            }
            continue;
        }
        let history: Vec<Message> = serde_json::from_value(case["history"].clone()).unwrap();
        let role: Role = serde_json::from_value(case["role"].clone()).unwrap();
        let got = tok
            .build_chat_input(case["query"].as_str().unwrap(), &history, role)
            .unwrap();
        assert_eq!(got, ids(&case["build_chat_input"]["input_ids"]), "{name}");
        assert_eq!(
            tok.decode(&got, false).unwrap(),
            case["decode"].as_str().unwrap(),
            "{name} decode"
        );
        let stops: Vec<u32> = ids(&case["generate_kwargs"]["eos_token_id"]);
        assert_eq!(tok.stop_ids(), stops);
        checked += 1;
    }
    assert!(checked >= 6);
    let v1 = Tokenizer::from_dir(fixture("v1")).unwrap();
    assert!(v1.build_chat_input("x", &[], Role::User).is_err());
}

#[test]
fn v3_process_response_parses_text_and_tool_calls() {
    let mut history = vec![Message::new(Role::User, "hi")];
    let reply = process_response_v3("\n 你好 [[训练时间]] ", &mut history).unwrap();
    assert_eq!(reply, Reply::Text("你好 2023年".into()));
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].content, "你好 [[训练时间]]");

    let tools: OrderedJson = serde_json::from_str(r#"[{"name": "get_weather"}]"#).unwrap();
    let mut history = vec![Message {
        role: Role::System,
        content: "s".into(),
        metadata: String::new(),
        tools: Some(tools),
    }];
    let out = "get_weather\n```python\ntool_call(city='北京', days=2)\n```";
    let Reply::ToolCall(call) = process_response_v3(out, &mut history).unwrap() else {
        panic!("not a tool call")
    };
    assert_eq!(call.name, "get_weather");
    assert_eq!(
        call.parameters,
        OrderedJson::Object(vec![
            ("city".into(), OrderedJson::String("北京".into())),
            ("days".into(), OrderedJson::Int(2))
        ])
    );
    assert_eq!(history[1].metadata, "get_weather");
    let bad = "get_weather\n```python\nimport os\n```";
    assert!(process_response_v3(bad, &mut history).is_err());
}

#[test]
fn system_tools_are_written_as_python_json() {
    let tok = Tokenizer::from_dir(fixture("v3")).unwrap();
    let tools: OrderedJson = serde_json::from_str(r#"[{"name": "天气", "b": 1}]"#).unwrap();
    let system = Message {
        role: Role::System,
        content: "Answer.".into(),
        metadata: String::new(),
        tools: Some(tools),
    };
    let got = tok.build_chat_input("q", &[system], Role::User).unwrap();
    let content = "Answer.\n[\n    {\n        \"name\": \"天气\",\n        \"b\": 1\n    }\n]";
    let mut want = vec![tok.gmask_id(), tok.sop_id()];
    want.extend(tok.build_single_message(Role::System, "", content).unwrap());
    want.extend(tok.build_single_message(Role::User, "", "q").unwrap());
    want.push(tok.role_id("assistant").unwrap());
    assert_eq!(got, want);
}

/// Every fixture's ids, pushed one at a time, give back exactly the full decode.
#[test]
fn streaming_decode_equals_full_decode() {
    let mut streams = 0;
    for dir in ["v1", "v1_unigram", "v2", "v3"] {
        let tok = Tokenizer::from_dir(fixture(dir)).unwrap();
        let text = std::fs::read_to_string(fixture(&format!("{dir}/cases.jsonl"))).unwrap();
        let mut sequences: Vec<Vec<u32>> = text
            .lines()
            .map(|l| ids(&serde_json::from_str::<Value>(l).unwrap()["ids"]))
            .collect();
        let decode: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(&format!("{dir}/decode_cases.json"))).unwrap(),
        )
        .unwrap();
        sequences.extend(decode.as_array().unwrap().iter().map(|c| ids(&c["ids"])));
        for seq in sequences {
            for skip in [false, true] {
                let mut stream = DecodeStream::new(&tok, skip);
                let mut out = String::new();
                for &id in &seq {
                    if let Some(piece) = stream.push(id).unwrap() {
                        out.push_str(&piece);
                    }
                }
                out.extend(stream.finish());
                assert_eq!(out, tok.decode(&seq, skip).unwrap(), "{dir} {seq:?}");
                streams += 1;
            }
        }
    }
    assert!(streams > 900);
}

#[test]
fn streaming_never_splits_byte_characters() {
    for dir in ["v1", "v2"] {
        let tok = Tokenizer::from_dir(fixture(dir)).unwrap();
        let ids = tok.encode("好👋", false);
        let mut stream = DecodeStream::new(&tok, false);
        let mut chunks = Vec::new();
        for &id in &ids {
            chunks.push(stream.push(id).unwrap());
        }
        // The four byte pieces of 👋 come out together, with the last one.
        assert_eq!(
            chunks.iter().flatten().cloned().collect::<Vec<_>>(),
            vec!["好".to_owned(), "👋".to_owned()],
            "{dir}"
        );
        assert!(chunks[chunks.len() - 2].is_none());
        assert!(stream.push(u32::MAX).is_err());
    }
}

#[test]
fn streaming_holds_v1_cleanup_until_decided() {
    let tok = Tokenizer::from_dir(fixture("v1")).unwrap();
    let ids = tok.encode("Hello , world !", false);
    let mut stream = DecodeStream::new(&tok, false);
    let mut out = String::new();
    for &id in &ids {
        let piece = stream.push(id).unwrap();
        out.extend(piece);
        assert!(
            !out.ends_with(' '),
            "a trailing space may still be cleaned up: {out:?}"
        );
    }
    out.extend(stream.finish());
    assert_eq!(out, "Hello, world!");
}
