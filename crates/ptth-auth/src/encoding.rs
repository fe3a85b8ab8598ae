//! Hex and base64 for keys and hashes in grants, logs and challenge answers.

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes hex (either case; `:` separators allowed, as OpenSSL prints fingerprints).
pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().filter(|&b| b != b':').collect();
    if digits.len() % 2 != 0 {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(pair[1]).to_digit(16)?;
            u8::try_from(hi << 4 | lo).ok()
        })
        .collect()
}

/// A 32-byte key in hex or base64 (standard or URL-safe, padded or not).
pub(crate) fn parse_key32(text: &str) -> Result<[u8; 32], String> {
    use base64::Engine as _;
    let text = text.trim();
    let bytes = if text.len() == 64 {
        unhex(text)
    } else {
        let t = text.trim_end_matches('=');
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(t)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t))
            .ok()
    };
    bytes
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| "expected a 32-byte key in hex (64 digits) or base64".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_keys() {
        assert_eq!(unhex("0aFF"), Some(vec![0x0a, 0xff]));
        assert_eq!(unhex("0a:ff"), Some(vec![0x0a, 0xff]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("g0"), None);
        assert_eq!(unhex("é0"), None);
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(parse_key32(&b64), Ok([7u8; 32]));
        assert!(parse_key32("AAAA").is_err());
    }
}
