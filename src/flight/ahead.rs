//! A query's answer encoded ahead of the connection's writes, bounded in bytes.
//!
//! HTTP/2 flow control lets the server send only as much as the client's window allows (gRPC
//! clients start it at 64 KiB and grow it as they measure the link); with only a few messages
//! buffered, the query stopped computing whenever the client's window was full, and a large
//! answer took longer over Flight SQL than the same answer over HTTP, where the socket's buffer
//! holds megabytes. The answer is computed and encoded on a task of its own up to [`AHEAD_BYTES`]
//! ahead; a client that goes away closes the channel, which ends the task and the query with it.

use arrow_flight::FlightData;
use futures::{Stream, StreamExt};
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc};
use tonic::Status;

/// Bytes of encoded messages kept ahead of the connection, per answer.
pub(super) const AHEAD_BYTES: usize = 8 << 20;

/// At most this many messages ahead, however small.
const AHEAD_MESSAGES: usize = 256;

/// Runs `messages` on a task of its own, at most [`AHEAD_BYTES`] (and [`AHEAD_MESSAGES`]) ahead
/// of the returned stream's reader.
pub(super) fn read_ahead<S>(messages: S) -> impl Stream<Item = Result<FlightData, Status>>
where
    S: Stream<Item = Result<FlightData, Status>> + Send + 'static,
{
    let mut messages = Box::pin(messages);
    let budget = Arc::new(Semaphore::new(AHEAD_BYTES));
    let (tx, rx) = mpsc::channel(AHEAD_MESSAGES);
    tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            let size = message
                .as_ref()
                .map_or(0, |m| m.data_header.len() + m.data_body.len());
            // A message larger than the whole budget waits until nothing else is ahead.
            let permits = u32::try_from(size.min(AHEAD_BYTES)).unwrap_or(u32::MAX);
            let Ok(permit) = budget.clone().acquire_many_owned(permits).await else {
                return;
            };
            if tx.send((message, permit)).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).map(|(message, _taken)| message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn message(size: usize) -> Result<FlightData, Status> {
        Ok(FlightData {
            data_body: Bytes::from(vec![0u8; size]),
            ..FlightData::default()
        })
    }

    #[tokio::test]
    async fn stays_within_its_byte_budget_and_keeps_the_order() {
        let produced = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = produced.clone();
        let source = futures::stream::iter(0..40usize).map(move |i| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut m = message(1 << 20)?;
            m.app_metadata = Bytes::from(i.to_le_bytes().to_vec());
            Ok(m)
        });
        let mut ahead = Box::pin(read_ahead(source));
        let first = ahead.next().await;
        assert!(matches!(first, Some(Ok(_))));
        // 1 taken, 8 MiB (8 messages) ahead, and the tenth made and waiting for its permits.
        let made = || produced.load(std::sync::atomic::Ordering::SeqCst);
        for _ in 0..500 {
            if made() >= 10 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(made(), 10, "messages made while the reader took one");
        let mut seen = 1;
        while let Some(m) = ahead.next().await {
            let m = m.expect("message");
            let i = usize::from_le_bytes(m.app_metadata[..8].try_into().expect("8 bytes"));
            assert_eq!(i, seen);
            seen += 1;
        }
        assert_eq!(seen, 40);
    }

    #[tokio::test]
    async fn a_message_over_the_budget_still_goes_through() {
        let source = futures::stream::iter(vec![message(AHEAD_BYTES * 2), message(10)]);
        let sizes: Vec<usize> = read_ahead(source)
            .map(|m| m.expect("message").data_body.len())
            .collect()
            .await;
        assert_eq!(sizes, vec![AHEAD_BYTES * 2, 10]);
    }
}
