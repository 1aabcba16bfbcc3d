//! `strata replay STREAM --follow`: a subscription printed as NDJSON, reconnecting from the last
//! cursor when the connection drops (a node restarted, or a cluster node went away); and
//! `strata subscribe NAME`, a durable subscription printed and acknowledged as it goes.

use super::{Client, Error, ReplayArgs, Result, client_error};
use std::io::Write;
use std::time::Duration;

/// Consecutive failed connections before giving up (one a second).
const MAX_RECONNECTS: u32 = 60;

impl Client {
    /// Follows `stream` with the replay parameters in `query` and the subscription's own in
    /// `args`, writing each event line to `out` (heartbeats only move the cursor).
    pub(super) async fn follow(
        &self,
        stream: &str,
        mut query: Vec<(&str, String)>,
        args: &ReplayArgs,
        out: &mut impl Write,
    ) -> Result<()> {
        query.push(("follow", "true".into()));
        if let Some(t) = &args.event_type {
            query.push(("type", t.clone()));
        }
        if let Some(w) = &args.filter {
            query.push(("where", w.clone()));
        }
        let mut cursor = args.cursor.clone();
        let mut failures = 0u32;
        loop {
            let mut asked = query.clone();
            if let Some(c) = &cursor {
                // The cursor says where to go on; where the first connection started no longer
                // matters.
                asked.retain(|(k, _)| !matches!(*k, "from" | "from_time"));
                asked.push(("cursor", c.clone()));
            }
            let sent = self
                .http
                .get(self.url(&format!("/v1/streams/{stream}/events")))
                .query(&asked)
                .send()
                .await;
            let why = connection(sent, &mut cursor, out, None, &mut failures).await?;
            reconnect(&mut failures, &format!("following {stream}"), why).await?;
        }
    }
}

impl Client {
    /// Consumes durable subscription `name`: prints each event line to `out` and acknowledges
    /// the cursor of what it printed; reconnects (taking its own hold over) when the connection
    /// drops. `takeover` replaces another live consumer at the start.
    pub async fn subscribe(&self, name: &str, takeover: bool, out: &mut impl Write) -> Result<()> {
        let mut cursor = None;
        let (mut failures, mut takeover) = (0u32, takeover);
        loop {
            let sent = self
                .http
                .get(self.url(&format!("/v1/subscriptions/{name}/events")))
                .query(&[("takeover", takeover.to_string())])
                .send()
                .await;
            let why = connection(sent, &mut cursor, out, Some((self, name)), &mut failures).await?;
            // The hold left behind is this consumer's own.
            takeover = true;
            reconnect(&mut failures, &format!("consuming {name}"), why).await?;
        }
    }

    /// Acknowledges `cursor` for durable subscription `name`.
    async fn ack(&self, name: &str, cursor: &str) -> Result<()> {
        let resp = self
            .http
            .post(self.url(&format!("/v1/subscriptions/{name}/ack")))
            .json(&serde_json::json!({ "cursor": cursor }))
            .send()
            .await
            .map_err(client_error)?;
        Self::check(resp).await.map(drop)
    }
}

/// One connection of a subscription: copies its events to `out` until it ends, and says why it
/// ended (to reconnect); a refusal (4xx) or an output that cannot be written is an error.
async fn connection(
    sent: reqwest::Result<reqwest::Response>,
    cursor: &mut Option<String>,
    out: &mut impl Write,
    ack: Option<(&Client, &str)>,
    failures: &mut u32,
) -> Result<String> {
    Ok(match sent {
        // Refused (a bad parameter, rights, another consumer): retrying would not help.
        Ok(resp) if resp.status().is_client_error() => {
            return Client::check(resp).await.map(|_| String::new());
        }
        Ok(resp) if resp.status().is_success() => {
            *failures = 0;
            match copy_events(resp, cursor, out, ack).await {
                Ok(()) => "the server closed the subscription".to_owned(),
                Err(e @ Error::Io { .. }) => return Err(e),
                Err(e) => e.to_string(),
            }
        }
        Ok(resp) => Client::check(resp)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default(),
        Err(e) => client_error(e).to_string(),
    })
}

/// Counts a failed connection and waits a second before the next, giving up after
/// [`MAX_RECONNECTS`] in a row.
async fn reconnect(failures: &mut u32, doing: &str, why: String) -> Result<()> {
    *failures += 1;
    if *failures > MAX_RECONNECTS {
        return Err(Error::Request(format!(
            "gave up {doing} after {MAX_RECONNECTS} failed reconnections: {why}"
        )));
    }
    eprintln!("strata: {why}; reconnecting in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

/// Writes the event lines of a subscription's answer to `out` as they come, keeping the last
/// cursor seen (an event's or a heartbeat's); with `ack`, acknowledges it for that durable
/// subscription once what it covers is written out.
async fn copy_events(
    mut resp: reqwest::Response,
    cursor: &mut Option<String>,
    out: &mut impl Write,
    ack: Option<(&Client, &str)>,
) -> Result<()> {
    let mut acked: Option<String> = None;
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(()),
            Err(e) => return Err(client_error(e)),
        };
        pending.extend_from_slice(&chunk);
        let Some(end) = pending.iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        let complete: Vec<u8> = pending.drain(..=end).collect();
        for line in complete.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if line.starts_with(b"{\"error\":") {
                let text = String::from_utf8_lossy(line);
                return Err(Error::Request(format!("the subscription failed: {text}")));
            }
            if let Some(c) = last_cursor(line) {
                *cursor = Some(c);
            }
            // A line with only a cursor is a heartbeat.
            if !line.starts_with(b"{\"cursor\":") {
                out.write_all(line)
                    .and_then(|()| out.write_all(b"\n"))
                    .map_err(|e| Error::io("cannot write the output", e))?;
            }
        }
        out.flush()
            .map_err(|e| Error::io("cannot write the output", e))?;
        if let (Some((client, name)), Some(c)) = (ack, cursor.as_ref())
            && acked.as_ref() != Some(c)
        {
            client.ack(name, c).await?;
            acked = Some(c.clone());
        }
    }
}

/// The cursor at the end of an event or heartbeat line (`…,"cursor":"v1.s.0-5"}`).
fn last_cursor(line: &[u8]) -> Option<String> {
    const FIELD: &[u8] = b"\"cursor\":\"";
    let at = line.windows(FIELD.len()).rposition(|w| w == FIELD)? + FIELD.len();
    let rest = &line[at..];
    let len = rest.iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&rest[..len]).ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::last_cursor;

    #[test]
    fn the_cursor_is_the_last_field() {
        assert_eq!(
            last_cursor(br#"{"offset":1,"data":{"cursor":"fake"},"cursor":"v1.o.0-2"}"#).as_deref(),
            Some("v1.o.0-2")
        );
        assert_eq!(
            last_cursor(br#"{"cursor":"v1.o.0-9.1-3"}"#).as_deref(),
            Some("v1.o.0-9.1-3")
        );
        assert_eq!(last_cursor(br#"{"offset":1}"#), None);
    }
}
