//! Authentication on the replication connection: trust, cleartext, MD5, and
//! SCRAM-SHA-256 or SCRAM-SHA-256-PLUS with `tls-server-end-point` channel binding,
//! chosen as libpq chooses (`channel_binding=disable|prefer|require`).

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    ChannelBinding as ChannelBindingData, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::frame::{auth_err, startup_error, unexpected, Backend, ServerFields};
use super::transport::{TlsState, Transport};
use super::{ChannelBinding, ReplicationError, SourceUrl};

/// Why `channel_binding=require` refuses this connection, with the fix.
pub(crate) fn channel_binding_refused(why: &str) -> ReplicationError {
    auth_err(format!(
        "channel_binding=require, but {why}; connect over TLS (sslmode=require or verify-full, \
         not a Unix socket) to a user that authenticates with scram-sha-256 in pg_hba.conf, \
         or set channel_binding=prefer"
    ))
}

/// The server wants a password and none was found: say where pgcdc looked.
pub(crate) fn no_password(url: &SourceUrl) -> ReplicationError {
    auth_err(format!(
        "the server wants a password for user `{}` but the source has none: not in the URL \
         (write postgres://{}:PASSWORD@..., percent-encoding special characters), not in \
         PGPASSWORD, and no line for {}:{}:{}:{} in the password file{} (it must exist and \
         be readable by its owner only)",
        url.user,
        url.user,
        url.host,
        url.port,
        url.dbname,
        url.user,
        url.passfile
            .as_ref()
            .map(|p| format!(" {}", p.display()))
            .unwrap_or_default()
    ))
}

pub(super) async fn authenticate(
    transport: &mut Transport,
    url: &SourceUrl,
) -> Result<(), ReplicationError> {
    let require = url.channel_binding == ChannelBinding::Require;
    let password = url.password_for_connect();
    let password = || {
        password
            .as_ref()
            .map(|p| p.expose().as_bytes())
            .ok_or_else(|| no_password(url))
    };
    let mut bound = false;
    loop {
        let message = match transport.read().await? {
            Backend::Message(m) => m,
            other => return Err(unexpected("authentication", &other)),
        };
        match message {
            Message::AuthenticationOk if require && !bound => return Err(channel_binding_refused(
                "the server let this user in without SCRAM (trust, peer or cert in pg_hba.conf)",
            )),
            Message::AuthenticationOk => return Ok(()),
            Message::AuthenticationCleartextPassword | Message::AuthenticationMd5Password(_)
                if require =>
            {
                return Err(channel_binding_refused(
                    "the server asks for a password without SCRAM (password or md5 in pg_hba.conf)",
                ))
            }
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(password()?, &mut transport.write_buf)?;
                transport.flush().await?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = md5_hash(url.user.as_bytes(), password()?, body.salt());
                frontend::password_message(hash.as_bytes(), &mut transport.write_buf)?;
                transport.flush().await?;
            }
            Message::AuthenticationSasl(body) => {
                let mut offered = Vec::new();
                let mut mechanisms = body.mechanisms();
                while let Some(m) = fallible_iterator::FallibleIterator::next(&mut mechanisms)
                    .map_err(|e| ReplicationError::Protocol(e.to_string()))?
                {
                    offered.push(m.to_owned());
                }
                let (mechanism, binding) =
                    choose_scram(&offered, &transport.tls, url.channel_binding)?;
                bound = mechanism == SCRAM_SHA_256_PLUS;
                scram(transport, password()?, mechanism, binding).await?;
            }
            Message::ErrorResponse(body) => {
                return Err(startup_error(ServerFields::parse(body.fields())?))
            }
            Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential
            | Message::AuthenticationGss
            | Message::AuthenticationSspi
            | Message::AuthenticationGssContinue(_) => {
                return Err(auth_err(
                    "the server asks for Kerberos/GSSAPI/SSPI, which pgcdc does not support; \
                     use scram-sha-256, md5 or password for this user in pg_hba.conf",
                ))
            }
            _ => {
                return Err(ReplicationError::Protocol(
                    "unexpected message during authentication".to_owned(),
                ))
            }
        }
    }
}

/// The SCRAM mechanism and channel binding flag, as libpq chooses them: SCRAM-SHA-256-PLUS
/// bound to the server's certificate when on TLS and offered (unless disabled); else plain
/// SCRAM-SHA-256 saying "y" (could bind, the server did not offer) or "n" (cannot bind).
fn choose_scram(
    offered: &[String],
    tls: &TlsState,
    wanted: ChannelBinding,
) -> Result<(&'static str, ChannelBindingData), ReplicationError> {
    let plus = offered.iter().any(|m| m == SCRAM_SHA_256_PLUS);
    let plain = offered.iter().any(|m| m == SCRAM_SHA_256);
    let end_point = match tls {
        TlsState::Tls { end_point } if wanted != ChannelBinding::Disable => end_point.clone(),
        _ => None,
    };
    if !plus && !plain {
        return Err(auth_err(format!(
            "the server offers SASL mechanisms {offered:?}; only SCRAM-SHA-256 (and -PLUS) is supported"
        )));
    }
    match (plus, end_point) {
        (true, Some(data)) => Ok((SCRAM_SHA_256_PLUS, ChannelBindingData::tls_server_end_point(data))),
        _ if wanted == ChannelBinding::Require => Err(channel_binding_refused(match tls {
            TlsState::None => "the connection is not encrypted",
            TlsState::Tls { end_point: None } => {
                "the server certificate's signature algorithm cannot be bound (RSASSA-PSS or Ed25519)"
            }
            TlsState::Tls { .. } => "the server does not offer SCRAM-SHA-256-PLUS",
        })),
        (false, Some(_)) => Ok((SCRAM_SHA_256, ChannelBindingData::unrequested())),
        _ if !plain => Err(auth_err(
            "the server offers only SCRAM-SHA-256-PLUS, which needs TLS with a certificate pgcdc can bind to",
        )),
        _ => Ok((SCRAM_SHA_256, ChannelBindingData::unsupported())),
    }
}

/// SCRAM-SHA-256 or SCRAM-SHA-256-PLUS; the server's final signature is verified.
async fn scram(
    transport: &mut Transport,
    password: &[u8],
    mechanism: &str,
    binding: ChannelBindingData,
) -> Result<(), ReplicationError> {
    let mut scram = ScramSha256::new(password, binding);
    frontend::sasl_initial_response(mechanism, scram.message(), &mut transport.write_buf)?;
    transport.flush().await?;
    match transport.read().await? {
        Backend::Message(Message::AuthenticationSaslContinue(body)) => {
            scram
                .update(body.data())
                .map_err(|e| auth_err(format!("SCRAM exchange failed: {e}")))?;
        }
        Backend::Message(Message::ErrorResponse(body)) => {
            return Err(startup_error(ServerFields::parse(body.fields())?))
        }
        other => return Err(unexpected("SCRAM", &other)),
    }
    frontend::sasl_response(scram.message(), &mut transport.write_buf)?;
    transport.flush().await?;
    match transport.read().await? {
        Backend::Message(Message::AuthenticationSaslFinal(body)) => scram
            .finish(body.data())
            .map_err(|e| auth_err(format!("the server's SCRAM signature did not verify: {e}"))),
        Backend::Message(Message::ErrorResponse(body)) => {
            Err(startup_error(ServerFields::parse(body.fields())?))
        }
        other => Err(unexpected("SCRAM", &other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_mechanism_and_channel_binding_as_libpq_chooses() {
        let both = [SCRAM_SHA_256_PLUS.to_owned(), SCRAM_SHA_256.to_owned()];
        let plain = [SCRAM_SHA_256.to_owned()];
        let tls = TlsState::Tls {
            end_point: Some(vec![1, 2, 3]),
        };
        let mechanism = |offered: &[String], tls: &TlsState, wanted| {
            choose_scram(offered, tls, wanted)
                .map(|(m, _)| m)
                .map_err(|e| e.to_string())
        };
        use ChannelBinding::{Disable, Prefer, Require};
        assert_eq!(mechanism(&both, &tls, Prefer), Ok(SCRAM_SHA_256_PLUS));
        assert_eq!(mechanism(&both, &tls, Require), Ok(SCRAM_SHA_256_PLUS));
        assert_eq!(mechanism(&both, &tls, Disable), Ok(SCRAM_SHA_256));
        assert_eq!(mechanism(&plain, &tls, Prefer), Ok(SCRAM_SHA_256));
        assert_eq!(mechanism(&both, &TlsState::None, Prefer), Ok(SCRAM_SHA_256));
        let refused = |offered: &[String], tls: &TlsState| {
            mechanism(offered, tls, Require).err().unwrap_or_default()
        };
        assert!(refused(&plain, &TlsState::None).contains("not encrypted"));
        assert!(refused(&plain, &tls).contains("does not offer SCRAM-SHA-256-PLUS"));
        assert!(refused(&both, &TlsState::Tls { end_point: None }).contains("cannot be bound"));
    }
}
