//! Fetching blobs and manifests, from an offset.

use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use oci_spec::image::Descriptor;
use reqwest::{Method, StatusCode, header};

use super::{Repository, check_status};
use crate::{ByteStream, Error, Fetcher, Result};

/// A [`Fetcher`] for one repository, trying its endpoints (mirrors, then the
/// upstream) in order.
#[derive(Debug, Clone)]
pub struct DockerFetcher {
    repos: Vec<Repository>,
}

impl DockerFetcher {
    pub(crate) fn new(repos: Vec<Repository>) -> Self {
        DockerFetcher { repos }
    }
}

fn is_manifest(desc: &Descriptor) -> bool {
    let media_type = desc.media_type().to_string();
    media_type.contains("manifest") || media_type.ends_with("image.index.v1+json")
}

#[async_trait]
impl Fetcher for DockerFetcher {
    async fn fetch(&self, desc: &Descriptor, offset: u64) -> Result<ByteStream> {
        let mut last = None;
        for repo in &self.repos {
            match fetch_from(repo, desc, offset).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Protocol {
            url: desc.digest().to_string(),
            reason: "no host to fetch from".into(),
        }))
    }
}

async fn fetch_from(repo: &Repository, desc: &Descriptor, offset: u64) -> Result<ByteStream> {
    let kind = if is_manifest(desc) {
        "manifests"
    } else {
        "blobs"
    };
    let url = format!("{}/{kind}/{}", repo.base, desc.digest());
    let media_type = desc.media_type().to_string();
    let response = repo
        .send(Method::GET, &url, |r| {
            let r = r.header(header::ACCEPT, media_type.as_str());
            if offset > 0 {
                r.header(header::RANGE, format!("bytes={offset}-"))
            } else {
                r
            }
        })
        .await?;
    let response = check_status(
        Method::GET,
        &url,
        response,
        &[StatusCode::OK, StatusCode::PARTIAL_CONTENT],
    )
    .await?;
    // A server that ignores Range sends everything: drop what we have.
    let skip = match response.status() {
        StatusCode::PARTIAL_CONTENT => {
            let range = response
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let start = range
                .strip_prefix("bytes ")
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.parse::<u64>().ok());
            if start != Some(offset) {
                return Err(Error::Protocol {
                    url,
                    reason: format!("asked for bytes from {offset}, got Content-Range {range:?}"),
                });
            }
            0
        }
        _ => offset,
    };
    let stream_url = url.clone();
    let stream = response.bytes_stream().map(move |chunk| {
        chunk.map_err(|source| Error::Connect {
            url: stream_url.clone(),
            source,
        })
    });
    Ok(Box::pin(Skip {
        inner: Box::pin(stream),
        remaining: skip,
    }))
}

/// Drops the first `remaining` bytes of a stream.
struct Skip {
    inner: ByteStream,
    remaining: u64,
}

impl Stream for Skip {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match self.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(mut chunk))) if self.remaining > 0 => {
                    let drop = self.remaining.min(chunk.len() as u64) as usize;
                    self.remaining -= drop as u64;
                    let rest = chunk.split_off(drop);
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(rest)));
                    }
                }
                other => return other,
            }
        }
    }
}
