//! [`TextEncoder`] for the ChatGLM tokenizer.

use chatglm_tokenizer::Tokenizer;

use crate::data::{SpecialTokens, TextEncoder};

/// Adapts a [`Tokenizer`] to preprocessing.
#[derive(Debug, Clone, Copy)]
pub struct TokEncoder<'a>(pub &'a Tokenizer);

impl TextEncoder for TokEncoder<'_> {
    fn encode_plain(&self, text: &str) -> Result<Vec<u32>, String> {
        Ok(self.0.encode(text, false))
    }

    fn special_tokens(&self) -> SpecialTokens {
        SpecialTokens {
            gmask: self.0.gmask_id(),
            bos: self.0.sop_id(),
            eos: self.0.eop_id(),
            pad: self.0.pad_id(),
        }
    }
}
