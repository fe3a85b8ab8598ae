//! The `Date` field of a server's answers.
//!
//! RFC 9110 §6.6.1: "An origin server with a clock MUST generate a Date header field in all
//! 2xx (Successful), 3xx (Redirection), and 4xx (Client Error) responses", and a recipient
//! with a clock that forwards a response without one "MUST ... append a corresponding Date
//! header field". hyper's servers wrote it; [`crate::server`] does the same for every answer
//! that has none.

use http::header::{HeaderMap, HeaderValue, DATE};
use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

/// Adds `Date: now` to `headers` unless they carry one already.
pub(crate) fn fill_in(headers: &mut HeaderMap) {
    if let http::header::Entry::Vacant(slot) = headers.entry(DATE) {
        if let Some(now) = now() {
            slot.insert(now);
        }
    }
}

/// The current time as an IMF-fixdate (RFC 9110 §5.6.7), formatted once a second per
/// thread and shared (a `HeaderValue` clone is a reference count).
fn now() -> Option<HeaderValue> {
    thread_local! {
        static LAST: RefCell<(u64, Option<HeaderValue>)> = const { RefCell::new((u64::MAX, None)) };
    }
    let at = SystemTime::now();
    let secs = at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).ok()?;
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != secs {
            let text = httpdate::fmt_http_date(at);
            *last = (secs, HeaderValue::from_str(&text).ok());
        }
        last.1.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_without_a_date_gets_the_current_one_and_one_with_a_date_keeps_it() {
        let mut headers = HeaderMap::new();
        fill_in(&mut headers);
        let date = headers[DATE].to_str().unwrap();
        let parsed = httpdate::parse_http_date(date).unwrap();
        let off = SystemTime::now()
            .duration_since(parsed)
            .unwrap_or_default()
            .as_secs();
        assert!(off <= 2, "{date} is the current time");
        assert!(
            date.ends_with(" GMT") && date.len() == 29,
            "{date} is an IMF-fixdate"
        );

        let mut given = HeaderMap::new();
        given.insert(
            DATE,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        fill_in(&mut given);
        assert_eq!(given[DATE], "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(given.len(), 1);
    }
}
