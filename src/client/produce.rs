//! `strata produce` of NDJSON, and what every kind of produce shares: adding up the answers and
//! naming a refused line or row as the input numbers it.

use super::{Client, Error, Result, client_error};
use std::io::BufRead;
use strata_proto::ConsistencyToken;

impl Client {
    /// Appends NDJSON from `input` to `stream` in requests of `batch` events. A bad line is reported
    /// with its line number in the input; batches before it stay appended. Returns the events
    /// appended, the duplicates skipped, and one consistency token covering every append.
    pub async fn produce(
        &self,
        stream: &str,
        input: impl BufRead,
        batch: usize,
    ) -> Result<(u64, u64, Option<ConsistencyToken>)> {
        let mut tally = Tally::default();
        let mut body = String::new();
        let mut line_numbers = Vec::new();
        let mut lines = input.lines().enumerate();
        loop {
            let next = lines.next();
            let done = next.is_none();
            if let Some((i, line)) = next {
                let line = line.map_err(|e| Error::io("cannot read the input", e))?;
                if line.trim().is_empty() {
                    continue;
                }
                body.push_str(&line);
                body.push('\n');
                line_numbers.push(i + 1);
            }
            if line_numbers.is_empty()
                || (!done && line_numbers.len() < batch.max(1) && body.len() < (8 << 20))
            {
                if done {
                    break;
                }
                continue;
            }
            let resp = self
                .http
                .post(self.url(&format!("/v1/streams/{stream}/events")))
                .header("content-type", "application/x-ndjson")
                .body(std::mem::take(&mut body))
                .send()
                .await
                .map_err(client_error)?;
            let resp = match Self::check(resp).await {
                Ok(resp) => resp,
                Err(Error::Request(msg)) => {
                    return Err(Error::Request(renumber(&msg, "line", |n| {
                        line_numbers.get(n.wrapping_sub(1)).copied()
                    })));
                }
                Err(e) => return Err(e),
            };
            tally.add(&resp.json().await.map_err(client_error)?);
            line_numbers.clear();
            if done {
                break;
            }
        }
        Ok(tally.into_parts())
    }
}

/// What a run of append requests added up to.
#[derive(Default)]
pub(super) struct Tally {
    appended: u64,
    duplicates: u64,
    token: Option<ConsistencyToken>,
}

impl Tally {
    /// Adds one append's answer.
    pub(super) fn add(&mut self, outcome: &serde_json::Value) {
        self.appended += outcome["appended"].as_u64().unwrap_or(0);
        self.duplicates += outcome["duplicates"].as_u64().unwrap_or(0);
        if let Some(t) = outcome["token"]
            .as_str()
            .and_then(|t| t.parse::<ConsistencyToken>().ok())
        {
            match &mut self.token {
                Some(all) => all.merge(&t),
                None => self.token = Some(t),
            }
        }
    }

    /// The events appended, the duplicates skipped, one token covering every append.
    pub(super) fn into_parts(self) -> (u64, u64, Option<ConsistencyToken>) {
        (self.appended, self.duplicates, self.token)
    }
}

/// Rewrites a server's `LABEL N` (`line 3`, `row 3`: within one request) to what `whole` maps `N`
/// to (the line or row of the whole input); any other message stays as it is.
pub(super) fn renumber(
    message: &str,
    label: &str,
    whole: impl Fn(usize) -> Option<usize>,
) -> String {
    let Some(rest) = message
        .strip_prefix(label)
        .and_then(|rest| rest.strip_prefix(' '))
    else {
        return message.to_owned();
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    match digits.parse::<usize>().ok().and_then(whole) {
        Some(n) => format!("{label} {n}{}", &rest[digits.len()..]),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::renumber;

    #[test]
    fn renumbers_lines_and_rows() {
        let lines = [10, 12, 13];
        let line = |n: usize| lines.get(n.wrapping_sub(1)).copied();
        assert_eq!(renumber("line 2: bad", "line", line), "line 12: bad");
        assert_eq!(renumber("other", "line", line), "other");
        assert_eq!(renumber("line 9: x", "line", line), "line 9: x");
        assert_eq!(
            renumber("row 2: bad", "row", |n| Some(1000 + n)),
            "row 1002: bad"
        );
        assert_eq!(
            renumber("rows 2: bad", "row", |n| Some(1000 + n)),
            "rows 2: bad"
        );
    }
}
