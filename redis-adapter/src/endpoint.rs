//! [`Endpoint`]: the server a consumer or a writer connects to, as which user, over what TLS;
//! printed with its password masked (`redis://app:***@host/`).

use std::fmt;

use redis::{ConnectionAddr, IntoConnectionInfo};

use crate::Error;
use crate::config::invalid;
use crate::tls::{Tls, install_crypto_provider};

/// What stands for a password wherever a URL or a setting is printed.
pub(crate) const MASK: &str = "***";

/// The user a connection without a username authenticates as.
const DEFAULT_USER: &str = "default";

/// A server URL, and the credentials and TLS settings given beside it.
#[derive(Clone)]
pub(crate) struct Endpoint {
    url: String,
    username: Option<String>,
    password: Option<String>,
    tls: Option<Tls>,
}

impl Endpoint {
    pub(crate) fn new(url: String) -> Self {
        Self { url, username: None, password: None, tls: None }
    }

    pub(crate) fn set_username(&mut self, username: String) {
        self.username = Some(username);
    }

    pub(crate) fn set_password(&mut self, password: String) {
        self.password = Some(password);
    }

    pub(crate) fn set_tls(&mut self, tls: Tls) {
        self.tls = Some(tls);
    }

    /// A client for the endpoint (opening one connects to nothing yet); reads the TLS files.
    pub(crate) fn client(&self) -> Result<redis::Client, Error> {
        let not_a_url = || invalid("url", "a Redis URL such as redis://host:6379/0");
        let info = self.url.as_str().into_connection_info().map_err(|_| not_a_url())?;
        let port = match info.addr() {
            ConnectionAddr::Tcp(_, port) | ConnectionAddr::TcpTls { port, .. } => Some(*port),
            _ => None,
        };
        if port == Some(0) || info.redis_settings().db() < 0 {
            return Err(not_a_url());
        }
        // The user and password as written: a `%` starts an escape of two hex digits.
        let written = redis::parse_redis_url(&self.url);
        let credentials = written.as_ref().map(|url| (url.username(), url.password()));
        if credentials.is_some_and(|(user, password)| {
            !well_escaped(user) || password.is_some_and(|password| !well_escaped(password))
        }) {
            return Err(invalid("url", "a Redis URL whose user and password escape `%` as %25"));
        }
        let mut settings = info.redis_settings().clone();
        if let Some(username) = &self.username {
            settings = settings.set_username(username);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        let secure = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
        let info = info.set_redis_settings(settings);
        let client = match &self.tls {
            Some(_) if !secure => return Err(invalid("tls", "a rediss:// URL to go with it")),
            Some(tls) => redis::Client::build_with_tls(info, tls.certificates()?),
            None => redis::Client::open(info),
        };
        if secure {
            install_crypto_provider();
        }
        client.map_err(|_| invalid("url", "a Redis URL such as redis://host:6379/0"))
    }

    /// The user the server is asked to authenticate: the username set, else the URL's, else
    /// `default`.
    pub(crate) fn user(&self) -> String {
        if let Some(username) = &self.username {
            return username.clone();
        }
        let from_url = self
            .url
            .as_str()
            .into_connection_info()
            .ok()
            .and_then(|info| info.redis_settings().username().map(ToString::to_string));
        from_url.unwrap_or_else(|| DEFAULT_USER.to_string())
    }

    /// The URL with its password (and a Unix socket URL's `pass=`) replaced by [`MASK`]; a
    /// string that is not a URL is not shown at all.
    pub(crate) fn redacted_url(&self) -> String {
        redact(&self.url)
    }
}

/// Whether every `%` in `text` starts an escape of two hex digits.
fn well_escaped(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().filter(|(_, byte)| **byte == b'%').all(|(at, _)| {
        bytes.get(at + 1..at + 3).is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    })
}

/// `url` with its password masked; `<not a Redis URL>` when it does not parse.
pub(crate) fn redact(url: &str) -> String {
    let Some(mut parsed) = redis::parse_redis_url(url) else {
        return "<not a Redis URL>".to_string();
    };
    if parsed.password().is_some() && parsed.set_password(Some(MASK)).is_err() {
        return "<not a Redis URL>".to_string();
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let value = if key == "pass" { MASK.to_string() } else { value.into_owned() };
                (key.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Endpoint");
        debug.field("url", &self.redacted_url());
        if let Some(username) = &self.username {
            debug.field("username", username);
        }
        if self.password.is_some() {
            debug.field("password", &MASK);
        }
        if let Some(tls) = &self.tls {
            debug.field("tls", tls);
        }
        debug.finish()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted_url())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_in_every_url_form() {
        assert_eq!(redact("redis://app:s3cret@host:6379/0"), "redis://app:***@host:6379/0");
        assert_eq!(redact("rediss://:s3cret@host/"), "rediss://:***@host/");
        assert_eq!(redact("redis://host/"), "redis://host/");
        let unix = redact("redis+unix:///run/redis.sock?user=app&pass=s3cret");
        assert!(!unix.contains("s3cret") && unix.contains("pass=***"), "{unix}");
        assert_eq!(redact("http://app:s3cret@host/"), "<not a Redis URL>");
        assert_eq!(redact("s3cret"), "<not a Redis URL>");
    }

    #[test]
    fn the_user_is_the_one_set_else_the_urls_else_default() {
        let mut endpoint = Endpoint::new("redis://app:pw@host/".into());
        assert_eq!(endpoint.user(), "app");
        endpoint.set_username("writer".into());
        assert_eq!(endpoint.user(), "writer");
        assert_eq!(Endpoint::new("redis://:pw@host/".into()).user(), "default");
    }

    #[test]
    fn tls_settings_need_a_rediss_url() {
        let mut endpoint = Endpoint::new("redis://host/".into());
        endpoint.set_tls(Tls::ca_pem("unused"));
        let error = endpoint.client().unwrap_err().to_string();
        assert!(error.contains("`tls`"), "{error}");
    }
}
