//! Building the TURN server's responses: successes and errors to a request, signed with the
//! request's key when it authenticated, fingerprinted when it was. Challenges carry no reason
//! phrase and nothing optional: they go to sources that have not authenticated, within the
//! bytes those sent ([`super::amplification`]).

use stun_types::{
    attribute::{
        AttributeStaticType, AttributeWrite, ErrorCode, Fingerprint, Nonce, PasswordAlgorithmValue,
        PasswordAlgorithms, Realm, UnknownAttributes,
    },
    message::{
        IntegrityAlgorithm, IntegrityKey, Message, MessageWrite, MessageWriteExt, MessageWriteVec,
    },
};

/// What signs a response: the key the request authenticated with, and its algorithm.
pub struct Signer<'k> {
    /// The key.
    pub key: &'k IntegrityKey,
    /// SHA-1 (MESSAGE-INTEGRITY) or SHA-256 (MESSAGE-INTEGRITY-SHA256), as the request used.
    pub algorithm: IntegrityAlgorithm,
}

/// A response under construction.
pub struct Reply {
    out: MessageWriteVec,
    fingerprint: bool,
}

impl Reply {
    /// A success response to `request`.
    pub fn success(request: &Message) -> Reply {
        Reply {
            out: Message::builder_success(request, MessageWriteVec::new()),
            fingerprint: request.has_attribute(Fingerprint::TYPE),
        }
    }

    /// An error response with `code` and `reason`.
    pub fn error(request: &Message, code: u16, reason: &str) -> Reply {
        let mut reply = Reply {
            out: Message::builder_error(request, MessageWriteVec::new()),
            fingerprint: request.has_attribute(Fingerprint::TYPE),
        };
        let error = ErrorCode::builder(code)
            .reason(reason)
            .build()
            .unwrap_or_else(|_| ErrorCode::builder(code).build().expect("a valid code"));
        reply.add(&error);
        reply
    }

    /// 420 naming the attributes not understood.
    pub fn unknown_attributes(
        request: &Message,
        unknown: &[stun_types::attribute::AttributeType],
    ) -> Reply {
        let mut reply = Reply::error(request, 420, "");
        reply.add(&UnknownAttributes::new(unknown));
        reply
    }

    /// 401 or 438: the realm and a nonce to authenticate with, and with `algorithms` (RFC
    /// 8489) the password algorithms this server takes — then the nonce must carry the
    /// security-feature cookie that announces them.
    pub fn challenge(
        request: &Message,
        code: u16,
        realm: &str,
        nonce: &str,
        algorithms: bool,
    ) -> Reply {
        let mut reply = Reply::error(request, code, "");
        if let Ok(realm) = Realm::new(realm) {
            reply.add(&realm);
        }
        if let Ok(nonce) = Nonce::new(nonce) {
            reply.add(&nonce);
        }
        if algorithms {
            reply.add(&PasswordAlgorithms::new(&[
                PasswordAlgorithmValue::MD5,
                PasswordAlgorithmValue::SHA256,
            ]));
        }
        reply
    }

    /// Adds an attribute (one the builder accepts: every attribute here is well-formed).
    pub fn add(&mut self, attribute: &dyn AttributeWrite) -> &mut Reply {
        let _ = self.out.add_attribute(attribute);
        self
    }

    /// Signs (if `signer`) and fingerprints (if the request was) the response.
    pub fn finish(mut self, signer: Option<&Signer>) -> Vec<u8> {
        if let Some(s) = signer {
            let _ = self.out.add_message_integrity_with_key(s.key, s.algorithm);
        }
        if self.fingerprint {
            let _ = self.out.add_fingerprint();
        }
        self.out.finish()
    }
}
