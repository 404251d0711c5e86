//! Self-hosted instances behind a private CA: a real TLS server on loopback.

use std::{sync::Arc, time::Duration};

use reviewq::{
    disposition::Disposition,
    gitlab::{Error as GitLabError, GitLabClient, GitLabConfig, ProjectRef},
    llm::{ChatRequest, ErrorKind, LlmClient, LlmConfig, Message},
};
use secrecy::SecretString;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    task::JoinHandle,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};
use url::Url;

const CA_PEM: &[u8] = include_bytes!("../fixtures/tls/ca.pem");
const SERVER_PEM: &[u8] = include_bytes!("../fixtures/tls/server.pem");
const SERVER_KEY: &[u8] = include_bytes!("../fixtures/tls/server.key");

/// Serves `connections` HTTPS requests on loopback, each answered with `body` as JSON.
async fn https_server(body: &'static str, connections: usize) -> (Url, JoinHandle<()>) {
    let certs = CertificateDer::pem_slice_iter(SERVER_PEM)
        .collect::<Result<Vec<_>, _>>()
        .expect("server certificate");
    let key = PrivateKeyDer::from_pem_slice(SERVER_KEY).expect("server key");
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("TLS config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let address = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        for _ in 0..connections {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            // A client that rejects the certificate ends the handshake; that is expected.
            let Ok(mut tls) = acceptor.accept(socket).await else {
                continue;
            };
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(response.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    });
    (
        Url::parse(&format!("https://{address}/")).expect("url"),
        task,
    )
}

#[tokio::test]
async fn gitlab_behind_a_private_ca_works_once_the_ca_is_configured() {
    let (url, server) =
        https_server(include_str!("../fixtures/gitlab/merge_request.json"), 2).await;
    let mut config = GitLabConfig::new(url, SecretString::from("glpat-test"));
    config.timeout = Duration::from_secs(5);
    config.retry_for = Duration::ZERO;

    let untrusted = GitLabClient::new(config.clone()).expect("client");
    let error = untrusted
        .merge_request(&ProjectRef::Id(1), 1)
        .await
        .expect_err("unknown issuer");
    assert!(matches!(error, GitLabError::Transport { .. }), "{error:?}");

    config.ca_cert_pem = Some(CA_PEM.to_vec());
    let trusted = GitLabClient::new(config).expect("client");
    let mr = trusted
        .merge_request(&ProjectRef::Id(1), 1)
        .await
        .expect("TLS with the private CA");
    assert_eq!(mr.iid, 14656);
    server.abort();
}

#[tokio::test]
async fn an_llm_endpoint_behind_a_private_ca_works_once_the_ca_is_configured() {
    let (url, server) = https_server(include_str!("../fixtures/glm/completion.json"), 2).await;
    let mut config = LlmConfig::new(url, None, "glm-4.6");
    config.timeout = Duration::from_secs(5);
    let request = ChatRequest::new(vec![Message::user("hi")]);

    let error = LlmClient::new(config.clone())
        .expect("client")
        .complete(&request)
        .await
        .expect_err("unknown issuer");
    assert_eq!(error.kind, ErrorKind::Transport);
    assert_eq!(error.disposition(), Disposition::Retry);

    config.ca_cert_pem = Some(CA_PEM.to_vec());
    let completion = LlmClient::new(config)
        .expect("client")
        .complete(&request)
        .await
        .expect("TLS with the private CA");
    assert_eq!(completion.usage.total_tokens, Some(1290));
    server.abort();
}
