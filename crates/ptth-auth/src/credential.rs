//! The credential an origin presents in `Authorization` (or `ptth-authorization`): a bearer
//! token or HTTP Basic user and password (RFC 7617).

use base64::Engine as _;
use http::HeaderValue;
use std::fmt;

use crate::error::AuthError;
use crate::token::BearerToken;

/// What an origin sends the gateway in a setup request's `Authorization` field, or in the
/// `ptth-authorization` field of its secret answer to the authorisation request. Its
/// `Debug` never shows a token or password.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OriginCredential {
    /// `Authorization: Bearer <token>` (RFC 6750).
    Bearer(BearerToken),
    /// `Authorization: Basic <base64(user ":" password)>` (RFC 7617).
    Basic(BasicCredentials),
}

impl OriginCredential {
    /// HTTP Basic credentials; see [`BasicCredentials::new`].
    pub fn basic(user: impl Into<String>, password: impl Into<String>) -> Result<Self, AuthError> {
        BasicCredentials::new(user, password).map(Self::Basic)
    }

    /// The `Authorization` header value, marked sensitive.
    pub fn header_value(&self) -> HeaderValue {
        match self {
            OriginCredential::Bearer(t) => t.header_value(),
            OriginCredential::Basic(b) => b.header_value(),
        }
    }
}

impl From<BearerToken> for OriginCredential {
    fn from(t: BearerToken) -> Self {
        Self::Bearer(t)
    }
}

impl From<BasicCredentials> for OriginCredential {
    fn from(b: BasicCredentials) -> Self {
        Self::Basic(b)
    }
}

impl fmt::Debug for OriginCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OriginCredential::Bearer(t) => f.debug_tuple("Bearer").field(t).finish(),
            OriginCredential::Basic(b) => f.debug_tuple("Basic").field(b).finish(),
        }
    }
}

/// An RFC 7617 user-id and password. The user name is not secret and shows in `Debug`;
/// the password never does.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicCredentials {
    user: String,
    password: String,
}

impl BasicCredentials {
    /// Checks and wraps a user name and password.
    ///
    /// RFC 7617 §2: the user-id cannot contain a colon, and neither may contain control
    /// characters (this refuses all of them, CR, LF and NUL included). The user must be
    /// non-empty (a gateway grant's `basic-user` is) and so must the password, which is a
    /// machine secret. Both are sent as UTF-8 (the `charset="UTF-8"` of §2.1); they are not
    /// normalised (§2.1's Unicode profiles), so they must be given exactly as the grant has
    /// them.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Result<Self, AuthError> {
        let (user, password) = (user.into(), password.into());
        if user.is_empty() {
            return Err(AuthError::Malformed("the Basic user must be non-empty"));
        }
        if user.contains(':') {
            return Err(AuthError::Malformed(
                "the Basic user must not contain ':' (RFC 7617)",
            ));
        }
        if password.is_empty() {
            return Err(AuthError::Malformed("the Basic password must be non-empty"));
        }
        if user.chars().chain(password.chars()).any(char::is_control) {
            return Err(AuthError::Malformed(
                "the Basic user and password must not contain control characters (RFC 7617)",
            ));
        }
        Ok(Self { user, password })
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// `Basic <base64 of the UTF-8 bytes of user ":" password>`, marked sensitive.
    pub fn header_value(&self) -> HeaderValue {
        let encoded = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.user, self.password));
        // Base64 is always a valid header value.
        let mut v = HeaderValue::from_str(&format!("Basic {encoded}"))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
        v.set_sensitive(true);
        v
    }
}

impl fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicCredentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Grants, Presented};

    #[test]
    fn rfc_7617_example_encoding() {
        // RFC 7617 §2: Aladdin / open sesame.
        let c = OriginCredential::basic("Aladdin", "open sesame").unwrap();
        assert_eq!(c.header_value(), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert!(c.header_value().is_sensitive());
        // §2.1's example: user "test", password "123£", as UTF-8.
        let c = OriginCredential::basic("test", "123\u{a3}").unwrap();
        assert_eq!(c.header_value(), "Basic dGVzdDoxMjPCow==");
        let t = OriginCredential::from(BearerToken::new("abc").unwrap());
        assert_eq!(t.header_value(), "Bearer abc");
        assert!(t.header_value().is_sensitive());
    }

    #[test]
    fn invalid_users_and_passwords_are_refused() {
        for (user, password) in [
            ("", "pw"),
            ("a:b", "pw"),
            ("ops", ""),
            ("o\rps", "pw"),
            ("ops", "p\nw"),
            ("ops", "p\0w"),
            ("o\u{7f}ps", "pw"),
        ] {
            assert!(
                matches!(
                    OriginCredential::basic(user, password),
                    Err(AuthError::Malformed(_))
                ),
                "{user:?} {password:?}"
            );
        }
        // A colon in the password is fine: only the first one separates.
        assert!(OriginCredential::basic("ops", "a:b").is_ok());
    }

    #[test]
    fn debug_shows_no_secret() {
        let c = OriginCredential::basic("ops", "correct-horse").unwrap();
        let d = format!("{c:?}");
        assert!(d.contains("ops") && !d.contains("correct-horse"), "{d}");
        let t = OriginCredential::from(BearerToken::new("s3cret-t0ken").unwrap());
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn round_trip_through_the_gateway_authenticator() {
        let grants = Grants::from_toml(
            r#"
[[grant]]
name = "ops"
basic-user = "ops"
basic-password = "correct:horse"
origins = ["https://ops.example.com"]
[[grant]]
name = "utf8"
basic-user = "jürgen"
basic-password = "pässwörd£"
origins = ["https://j.example.com"]
[[grant]]
name = "tok"
token = "t0ken"
origins = ["https://t.example.com"]
"#,
        )
        .unwrap();
        let check = |c: &OriginCredential| {
            let v = c.header_value();
            grants
                .authenticate(&Presented {
                    authorization: Some(&v),
                    ..Default::default()
                })
                .map(|g| g.iter().map(|g| g.name.clone()).collect::<Vec<_>>())
        };
        let ok = OriginCredential::basic("ops", "correct:horse").unwrap();
        assert_eq!(check(&ok).unwrap(), vec!["ops"]);
        let utf8 = OriginCredential::basic("jürgen", "pässwörd£").unwrap();
        assert_eq!(check(&utf8).unwrap(), vec!["utf8"]);
        let bearer = OriginCredential::from(BearerToken::new("t0ken").unwrap());
        assert_eq!(check(&bearer).unwrap(), vec!["tok"]);
        for wrong in [
            OriginCredential::basic("ops", "correct:horsE").unwrap(),
            OriginCredential::basic("nobody", "correct:horse").unwrap(),
            OriginCredential::basic("Ops", "correct:horse").unwrap(),
            // The same secret under the other scheme proves nothing.
            OriginCredential::basic("tok", "t0ken").unwrap(),
        ] {
            assert_eq!(check(&wrong).unwrap_err(), AuthError::Rejected, "{wrong:?}");
        }
    }
}
