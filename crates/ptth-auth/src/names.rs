//! DNS host names as grants and certificates compare them: the root label, one-label
//! wildcards (`*.parent`), and RFC 6125 matching.

/// `host` without the trailing dot of an absolute name (`.` alone stays as it is).
pub(crate) fn strip_root(host: &str) -> &str {
    // FQDNs with and without the root label name the same host (RFC 1034 §3.1).
    match host.strip_suffix('.') {
        Some(h) if !h.is_empty() => h,
        _ => host,
    }
}

/// Whether `host` is exactly one non-empty label followed by `.parent` (ASCII
/// case-insensitive).
pub(crate) fn one_label_under(host: &str, parent: &str) -> bool {
    let Some(cut) = host.len().checked_sub(parent.len() + 1) else {
        return false;
    };
    if cut == 0 || !host.is_char_boundary(cut) {
        return false;
    }
    let (label, rest) = host.split_at(cut);
    rest.starts_with('.') && rest[1..].eq_ignore_ascii_case(parent) && !label.contains('.')
}

/// RFC 6125 §6.4: `reference` (a DNS name) against `presented` (maybe `*.parent`).
pub(crate) fn dns_name_matches(presented: &str, reference: &str) -> bool {
    let presented = presented.strip_suffix('.').unwrap_or(presented);
    let reference = reference.strip_suffix('.').unwrap_or(reference);
    if presented.eq_ignore_ascii_case(reference) {
        return true;
    }
    // RFC 6125 §6.4.3: the wildcard "*" is the complete left-most label, and matches one
    // label only.
    match presented.strip_prefix("*.") {
        Some(parent) => !reference.starts_with('*') && one_label_under(reference, parent),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_match_per_rfc_6125() {
        assert!(dns_name_matches("a.example.com", "A.Example.com"));
        assert!(dns_name_matches("*.example.com", "a.example.com"));
        assert!(!dns_name_matches("*.example.com", "example.com"));
        assert!(!dns_name_matches("*.example.com", "a.b.example.com"));
        assert!(!dns_name_matches("a*.example.com", "ab.example.com"));
        assert!(!dns_name_matches("*.example.com", "*.example.com.evil"));
    }
}
