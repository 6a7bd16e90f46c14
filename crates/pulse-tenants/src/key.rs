//! The API key format: `pk_<key id>_<secret>`, stored as a SHA-256.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every API key starts with.
pub const KEY_PREFIX: &str = "pk_";

const KEY_ID_CHARS: usize = 12;
const SECRET_BYTES: usize = 20;
const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A key's public id: 12 of `[a-z0-9]`, printed in logs and used to revoke the key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct KeyId(String);

/// Why a key id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key id {0:?} must be {KEY_ID_CHARS} characters of a-z or 0-9")]
pub struct InvalidKeyId(pub String);

impl KeyId {
    /// Validates `raw`.
    pub fn parse(raw: &str) -> Result<Self, InvalidKeyId> {
        let valid = raw.len() == KEY_ID_CHARS
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidKeyId(raw.to_owned()))
        }
    }

    fn random() -> Self {
        // 36^12 ids: collisions are caught by the store's primary key, not assumed away.
        let mut bytes = [0u8; KEY_ID_CHARS];
        fill(&mut bytes);
        Self(
            bytes
                .iter()
                .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
                .collect(),
        )
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for KeyId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn fill(bytes: &mut [u8]) {
    // The operating system's generator does not fail on the platforms Pulse runs on; a key
    // made of zeros would be worse than stopping.
    getrandom::fill(bytes).expect("the operating system's random generator answers");
}

/// The key id a presented key names, when it has the key shape (`pk_<12 of [a-z0-9]>_<40 hex>`),
/// without copying it.
pub(crate) fn id_of(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let secret_ok =
        secret.len() == SECRET_BYTES * 2 && secret.bytes().all(|b| b.is_ascii_hexdigit());
    let id_ok = id.len() == KEY_ID_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (secret_ok && id_ok).then_some(id)
}

/// A whole API key as a client presents it. Its `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.key_id() {
            Some(id) => write!(f, "ApiKey({KEY_PREFIX}{id}_…)"),
            None => f.write_str("ApiKey(<malformed>)"),
        }
    }
}

impl ApiKey {
    /// A new random key.
    pub(crate) fn generate() -> Self {
        let mut secret = [0u8; SECRET_BYTES];
        fill(&mut secret);
        Self(format!(
            "{KEY_PREFIX}{}_{}",
            KeyId::random(),
            hex::encode(secret)
        ))
    }

    /// A presented key, not yet checked.
    pub fn presented(raw: &str) -> Self {
        Self(raw.to_owned())
    }

    /// The key id it names, when it has the key shape.
    pub fn key_id(&self) -> Option<KeyId> {
        id_of(&self.0).map(|id| KeyId(id.to_owned()))
    }

    /// The SHA-256 of the key, hex: what the store keeps.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }

    /// Whether the whole key `presented` hashes to `digest`, compared in constant time.
    pub(crate) fn digest_matches(presented: &str, digest: &[u8; 32]) -> bool {
        let ours = Sha256::digest(presented.as_bytes());
        ours.as_slice().ct_eq(digest.as_slice()).into()
    }

    /// Whether this key hashes to `stored` (hex), compared in constant time.
    pub fn matches(&self, stored: &str) -> bool {
        let Ok(stored) = hex::decode(stored) else {
            return false;
        };
        let ours = Sha256::digest(self.0.as_bytes());
        ours.as_slice().ct_eq(stored.as_slice()).into()
    }

    /// The whole key, to show once to whoever created it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The token that opens `/admin/v1`: from `PULSE_ADMIN_TOKEN`, or generated once into the
/// data directory. Its `Debug` hides it; it is never logged.
#[derive(Clone)]
pub struct AdminToken(String);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(…)")
    }
}

/// Shortest admin token accepted from the operator.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;

impl AdminToken {
    /// An operator's token: at least [`MIN_ADMIN_TOKEN_CHARS`] printable ASCII characters.
    pub fn new(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.len() < MIN_ADMIN_TOKEN_CHARS || !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "the admin token must be at least {MIN_ADMIN_TOKEN_CHARS} printable ASCII \
                 characters without spaces"
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// A new random token (256 bits).
    pub fn generate() -> Self {
        let mut secret = [0u8; 32];
        fill(&mut secret);
        Self(format!("pa_{}", hex::encode(secret)))
    }

    /// Whether `presented` is this token, compared in constant time (over the digests, so the
    /// lengths do not leak either).
    pub fn matches(&self, presented: &str) -> bool {
        let ours = Sha256::digest(self.0.as_bytes());
        let theirs = Sha256::digest(presented.as_bytes());
        ours.as_slice().ct_eq(theirs.as_slice()).into()
    }

    /// The token, to write to its file.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admin_token_matches_only_itself_and_short_ones_are_refused() {
        let token = AdminToken::generate();
        assert!(token.matches(token.expose()));
        assert!(!token.matches(&token.expose()[1..]));
        assert!(!token.matches(""));
        assert!(AdminToken::new("short").is_err());
        assert!(AdminToken::new("with a space inside it").is_err());
        let given = AdminToken::new("0123456789abcdef").unwrap();
        assert!(given.matches("0123456789abcdef"));
        assert_eq!(format!("{given:?}"), "AdminToken(…)");
    }

    #[test]
    fn a_generated_key_names_its_id_and_matches_only_its_own_hash() {
        let key = ApiKey::generate();
        let id = key.key_id().expect("a generated key has the key shape");
        assert!(key.expose().starts_with(&format!("pk_{id}_")));
        assert_eq!(key.expose().len(), 3 + 12 + 1 + 40);
        assert!(key.matches(&key.hash()));
        let other = ApiKey::generate();
        assert_ne!(other.key_id(), Some(id), "ids are random");
        assert!(!other.matches(&key.hash()));
        assert!(!key.matches("not hex"));
        assert!(
            !format!("{key:?}").contains(&key.expose()[16..]),
            "Debug hides the secret"
        );
    }

    #[test]
    fn key_ids_are_exactly_12_lowercase_letters_or_digits() {
        for good in ["abcdefghijkl", "0123456789az", "k3y1dk3y1d00"] {
            assert_eq!(
                KeyId::parse(good).map(|id| id.to_string()),
                Ok(good.to_owned())
            );
        }
        for bad in [
            "",
            "abc",
            "abcdefghijk",
            "abcdefghijklm",
            "ABCDEFGHIJKL",
            "abcdefghijkL",
            "abcdefghijk-",
            "abcdefghijk_",
            "abcdefghijk ",
        ] {
            assert_eq!(
                KeyId::parse(bad),
                Err(InvalidKeyId(bad.to_owned())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn random_key_ids_draw_on_the_whole_alphabet() {
        // 2,400 characters: a letter of the 36 is missing from them with a probability
        // below 10^-26, unless the draw leaves some out.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let id = KeyId::random();
            assert_eq!(KeyId::parse(id.as_str()), Ok(id.clone()));
            seen.extend(id.as_str().bytes());
        }
        assert_eq!(seen, ALPHABET.iter().copied().collect());
    }

    #[test]
    fn a_key_id_is_found_in_a_map_by_its_text() {
        let id = KeyId::parse("abcdefghijkl").expect("valid");
        let mut map = std::collections::HashMap::new();
        map.insert(id, 1);
        map.insert(KeyId::parse("mnopqrstuvwx").expect("valid"), 2);
        assert_eq!(map.get("abcdefghijkl"), Some(&1));
        assert_eq!(map.get("mnopqrstuvwx"), Some(&2));
        assert_eq!(map.get("yz0123456789"), None);
    }

    #[test]
    fn a_keys_debug_names_its_id_and_never_its_secret() {
        let key = ApiKey::generate();
        let id = key.key_id().expect("key shape");
        assert_eq!(format!("{key:?}"), format!("ApiKey(pk_{id}_…)"));
        let secret = &key.expose()[16..];
        assert!(!format!("{key:?}").contains(secret));
        // A malformed key may be a real key mistyped: none of it is shown.
        let mistyped = ApiKey::presented(&format!("pk_{id}_{}", &secret[1..]));
        assert_eq!(format!("{mistyped:?}"), "ApiKey(<malformed>)");
    }

    #[test]
    fn malformed_keys_name_no_key_id() {
        let secret = "a".repeat(40);
        for bad in [
            String::new(),
            "pk_".into(),
            format!("pk_abcdefghijkl{secret}"),
            format!("pk_ABCDEFGHIJKL_{secret}"),
            format!("pk_abc_{secret}"),
            format!("pk_abcdefghijkl_{}", "z".repeat(40)),
            format!("pk_abcdefghijkl_{}", "a".repeat(39)),
            format!("sk_abcdefghijkl_{secret}"),
        ] {
            assert_eq!(ApiKey::presented(&bad).key_id(), None, "{bad:?}");
        }
        assert!(ApiKey::presented(&format!("pk_abcdefghijkl_{secret}"))
            .key_id()
            .is_some());
    }
}
