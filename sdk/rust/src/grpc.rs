//! The gRPC client for the control plane's `aviary.v1.ControlPlane` service, for backends that
//! prefer gRPC to REST for minting tokens. The generated stubs are in [`proto`].

use std::fmt;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};
use crate::retry::RetryPolicy;
use crate::types::{IssuedToken, TokenRequest};

/// The generated protobuf messages and client (`aviary.v1`).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("aviary.v1");
}

/// A gRPC control-plane client authenticated with an app API key. Cheap to clone; clones share
/// one HTTP/2 connection.
#[derive(Clone)]
pub struct GrpcClient {
    inner: proto::control_plane_client::ControlPlaneClient<Channel>,
    authorization: MetadataValue<tonic::metadata::Ascii>,
    retry: RetryPolicy,
}

impl fmt::Debug for GrpcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcClient").field("authorization", &"<redacted>").finish_non_exhaustive()
    }
}

impl GrpcClient {
    /// Connects to the control plane's gRPC endpoint (e.g. `http://127.0.0.1:50051`).
    pub async fn connect(url: impl Into<String>, api_key: &str) -> Result<GrpcClient> {
        let url = url.into();
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| Error::InvalidUrl(format!("{url}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10));
        let channel = endpoint.connect().await?;
        let authorization = format!("Bearer {api_key}")
            .parse()
            .map_err(|_| Error::InvalidConfig("the API key is not valid ASCII metadata".to_owned()))?;
        Ok(GrpcClient {
            inner: proto::control_plane_client::ControlPlaneClient::new(channel),
            authorization,
            retry: RetryPolicy::default(),
        })
    }

    /// Replaces the retry policy (used for `UNAVAILABLE` and `RESOURCE_EXHAUSTED`).
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Mints a connection token (`IssueToken`), like [`Client::mint_token`](crate::Client::mint_token).
    pub async fn issue_token(&self, app_id: &str, request: &TokenRequest) -> Result<IssuedToken> {
        let message = proto::IssueTokenRequest {
            app_id: app_id.to_owned(),
            client_id: request.client_id.clone(),
            ttl_s: request.ttl_s.unwrap_or(0),
            capabilities: request
                .capabilities
                .iter()
                .flatten()
                .map(|(glob, ops)| {
                    let operations = ops.iter().map(|op| op.as_str().to_owned()).collect();
                    (glob.clone(), proto::Operations { operations })
                })
                .collect(),
            info_json: request.info.as_ref().map(|info| info.to_string()),
        };
        let mut retry = 0u32;
        loop {
            let mut call = tonic::Request::new(message.clone());
            call.metadata_mut().insert("authorization", self.authorization.clone());
            match self.inner.clone().issue_token(call).await {
                Ok(response) => {
                    let response = response.into_inner();
                    return Ok(IssuedToken { token: response.token, expires_at: response.expires_at });
                }
                Err(status) => {
                    let retryable = matches!(status.code(), tonic::Code::Unavailable | tonic::Code::ResourceExhausted);
                    match self.retry.delay(retry, None).filter(|_| retryable) {
                        Some(delay) => {
                            tokio::time::sleep(delay).await;
                            retry += 1;
                        }
                        None => return Err(status.into()),
                    }
                }
            }
        }
    }
}
