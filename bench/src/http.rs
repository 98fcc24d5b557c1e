//! Just enough HTTP/1.1 to poll an admin endpoint (`/readyz`, `/metrics`) and for the
//! baseline worker to answer the same polls, so both sides are observed the same way.

use anyhow::{bail, Context};
use std::future::Future;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `GET path` on `addr`: the status code and the body.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let (status, _, body) = get_with_head(addr, path).await?;
    Ok((status, body))
}

/// `GET path` on `addr`: the status code, the head (status line and headers) and the body.
pub async fn get_with_head(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::with_capacity(16 * 1024);
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("an HTTP response without a blank line")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status code in {head:?}"))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        bail!("chunked responses are not supported");
    }
    Ok((status, head.to_owned(), body.to_owned()))
}

/// The sum of every sample of `metric` in a Prometheus text exposition.
pub fn metric_sum(exposition: &str, metric: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| {
            line.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Serves `answer(path) -> (status, body)` on `listener` until the process ends.
pub fn serve<F, Fut>(listener: TcpListener, answer: F)
where
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = (u16, String)> + Send,
{
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let (status, body) = answer(path).await;
                let response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_labelled_sample_of_a_metric_only() {
        let text = "# HELP warren_tasks_succeeded_total x\n\
                    warren_tasks_succeeded_total{queue=\"q\",task=\"a\"} 5\n\
                    warren_tasks_succeeded_total{queue=\"q\",task=\"b\"} 7\n\
                    warren_tasks_succeeded_total_other 100\n\
                    plain 3\n";
        assert_eq!(metric_sum(text, "warren_tasks_succeeded_total"), 12.0);
        assert_eq!(metric_sum(text, "plain"), 3.0);
    }

    #[tokio::test]
    async fn the_client_reads_what_the_server_answers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        serve(listener, |path: String| async move {
            (200, format!("path {path}"))
        });
        let (status, body) = get(addr, "/metrics").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "path /metrics"));
    }
}
