//! Admin API bearer tokens: `ptk_{id}_{secret}`. Only the SHA-256 of the secret is stored (in
//! the replicated state), so a copy of the data directory does not leak usable tokens.

use ring::rand::{SecureRandom, SystemRandom};

use crate::state::{Role, State, TokenRecord};

pub const PREFIX: &str = "ptk_";

/// A freshly minted token: the record to replicate, and the secret to show once.
pub struct Minted {
    pub record: TokenRecord,
    pub token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("the system random number generator failed")]
    Random,
}

pub fn mint(name: &str, role: Role) -> Result<Minted, MintError> {
    let rng = SystemRandom::new();
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    rng.fill(&mut id).map_err(|_| MintError::Random)?;
    rng.fill(&mut secret).map_err(|_| MintError::Random)?;
    let id = hex(&id);
    let secret = hex(&secret);
    Ok(Minted {
        record: TokenRecord {
            id: id.clone(),
            name: name.to_string(),
            role,
            secret_sha256: sha256_hex(secret.as_bytes()),
        },
        token: format!("{PREFIX}{id}_{secret}"),
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token: send Authorization: Bearer ptk_...")]
    Missing,
    #[error("the bearer token is malformed or unknown")]
    Invalid,
    #[error(
        "this token's role may not do this (viewer tokens only read, join tokens only join, edge tokens only enrol edges)"
    )]
    Forbidden,
}

/// The role of the token in an `Authorization` header value.
pub fn authenticate(state: &State, header: Option<&str>) -> Result<Role, AuthError> {
    let value = header.ok_or(AuthError::Missing)?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or(AuthError::Missing)?
        .trim();
    authenticate_token(state, token).map(|(_, role)| role)
}

/// The id and role of a bare token (`ptk_{id}_{secret}`).
pub fn authenticate_token(state: &State, token: &str) -> Result<(String, Role), AuthError> {
    let rest = token.strip_prefix(PREFIX).ok_or(AuthError::Invalid)?;
    let (id, secret) = rest.split_once('_').ok_or(AuthError::Invalid)?;
    let record = state.tokens.get(id).ok_or(AuthError::Invalid)?;
    let presented = sha256_hex(secret.as_bytes());
    if constant_time_eq(presented.as_bytes(), record.value.secret_sha256.as_bytes()) {
        Ok((id.to_string(), record.value.role))
    } else {
        Err(AuthError::Invalid)
    }
}

pub fn require_admin(role: Role) -> Result<(), AuthError> {
    match role {
        Role::Admin => Ok(()),
        Role::Viewer | Role::Join | Role::Edge => Err(AuthError::Forbidden),
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, Proposal};

    #[test]
    fn minted_tokens_authenticate_with_their_role_only() {
        let admin = mint("ops", Role::Admin).unwrap();
        let viewer = mint("dash", Role::Viewer).unwrap();
        let mut state = State::default();
        for (i, m) in [&admin, &viewer].iter().enumerate() {
            let p = Proposal {
                at_ms: 0,
                command: Command::CreateToken {
                    token: m.record.clone(),
                },
            };
            state.apply(i as u64 + 1, &p);
        }
        let bearer = |t: &str| format!("Bearer {t}");
        assert_eq!(
            authenticate(&state, Some(&bearer(&admin.token))),
            Ok(Role::Admin)
        );
        assert_eq!(
            authenticate(&state, Some(&bearer(&viewer.token))),
            Ok(Role::Viewer)
        );
        assert_eq!(authenticate(&state, None), Err(AuthError::Missing));
        let forged = format!("{}x", &admin.token[..admin.token.len() - 1]);
        assert_eq!(
            authenticate(&state, Some(&bearer(&forged))),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            authenticate(&state, Some("Bearer nonsense")),
            Err(AuthError::Invalid)
        );
        assert_eq!(require_admin(Role::Viewer), Err(AuthError::Forbidden));
        assert!(!admin.token.contains(&admin.record.secret_sha256));
    }
}
