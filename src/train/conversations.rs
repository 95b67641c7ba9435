//! A tolerant, streaming reader of ShareGPT files: a top-level JSON array of
//! `{"id", "conversations": [{"from", "value"}]}` records. The published V3 file is cut off in the
//! middle of a record, which a whole-file JSON parser rejects outright; this reader scans the array
//! one element at a time (tracking strings and nesting), parses each complete element on its own
//! and stops cleanly at a broken tail, reporting what it recovered and what it skipped.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::model::ChatMessage;

/// A usable conversation: roles mapped to the chat-template names (user, assistant, system).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversation {
    pub id: String,
    pub messages: Vec<ChatMessage>,
    /// Assistant turns dropped from before the first user turn (see `ShareGptReader::convert`).
    pub dropped_opening_turns: usize,
}

/// Why a complete record was not turned into a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SkipReason {
    /// Not valid JSON, or `id` / `conversations` / `from` / `value` missing or of the wrong type.
    Malformed,
    /// A turn whose `from` is none of human, gpt, system (e.g. bing, bard, chatgpt).
    UnknownRole,
    /// No user turn at all (or no turns).
    NoUserTurn,
    NoAssistantTurn,
    /// After any system turns, the turns do not alternate user, assistant, user, … (two turns of
    /// one role in a row, or a system turn later on): a shape the chat never has at inference.
    NotAlternating,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::Malformed => "malformed record",
            SkipReason::UnknownRole => "unknown role",
            SkipReason::NoUserTurn => "no user turn",
            SkipReason::NoAssistantTurn => "no assistant turn",
            SkipReason::NotAlternating => "turns do not alternate user / assistant",
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadReport {
    /// Complete array elements found (usable or skipped).
    pub records: usize,
    pub usable: usize,
    /// Usable conversations that opened with assistant turns, dropped (`ShareGptReader::convert`).
    pub opened_by_assistant: usize,
    pub skipped: BTreeMap<SkipReason, usize>,
    /// Bytes of an incomplete last element (the broken tail), 0 when the file ends cleanly.
    pub truncated_bytes: usize,
    /// False when the file ends before the array's closing `]`.
    pub closed: bool,
}

impl fmt::Display for ReadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} complete records, {} usable conversations", self.records, self.usable)?;
        if self.opened_by_assistant > 0 {
            write!(f, " ({} of them opened with an assistant turn, dropped)", self.opened_by_assistant)?;
        }
        for (reason, n) in &self.skipped {
            write!(f, "; skipped {n} ({reason})")?;
        }
        if !self.closed {
            write!(f, "; file cut off ({} bytes of an incomplete record dropped)", self.truncated_bytes)?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct RawRecord {
    id: String,
    conversations: Vec<RawTurn>,
}

#[derive(Deserialize)]
struct RawTurn {
    from: String,
    value: String,
}

/// Reads every usable conversation of a ShareGPT file, in file order.
pub fn read_sharegpt(path: &Path) -> Result<(Vec<Conversation>, ReadReport)> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = ShareGptReader::new(BufReader::with_capacity(1 << 20, file), path);
    let conversations = reader.by_ref().collect::<Result<Vec<_>>>()?;
    Ok((conversations, reader.report))
}

/// Yields usable conversations one by one; `report` is complete once the iterator is exhausted.
pub struct ShareGptReader<R: BufRead> {
    input: R,
    path: PathBuf,
    started: bool,
    done: bool,
    offset: usize,
    pub report: ReadReport,
}

impl<R: BufRead> ShareGptReader<R> {
    /// `path` only names the input in error messages.
    pub fn new(input: R, path: &Path) -> Self {
        ShareGptReader {
            input,
            path: path.to_path_buf(),
            started: false,
            done: false,
            offset: 0,
            report: ReadReport::default(),
        }
    }

    fn next_byte(&mut self) -> Result<Option<u8>> {
        let buf = self.input.fill_buf().map_err(|e| Error::io(&self.path, e))?;
        let Some(&b) = buf.first() else { return Ok(None) };
        self.input.consume(1);
        self.offset += 1;
        Ok(Some(b))
    }

    fn next_token(&mut self) -> Result<Option<u8>> {
        while let Some(b) = self.next_byte()? {
            if !b.is_ascii_whitespace() {
                return Ok(Some(b));
            }
        }
        Ok(None)
    }

    /// The bytes of one object whose `{` was just read, or None when the input ends inside it.
    fn object_bytes(&mut self) -> Result<Option<Vec<u8>>> {
        let mut bytes = vec![b'{'];
        let (mut depth, mut in_string, mut escaped) = (1usize, false, false);
        loop {
            let buf = self.input.fill_buf().map_err(|e| Error::io(&self.path, e))?;
            if buf.is_empty() {
                self.report.truncated_bytes = bytes.len();
                return Ok(None);
            }
            let mut used = buf.len();
            for (i, &b) in buf.iter().enumerate() {
                if in_string {
                    match (escaped, b) {
                        (true, _) => escaped = false,
                        (false, b'\\') => escaped = true,
                        (false, b'"') => in_string = false,
                        _ => {}
                    }
                    continue;
                }
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    used = i + 1;
                    break;
                }
            }
            bytes.extend_from_slice(&buf[..used]);
            self.input.consume(used);
            self.offset += used;
            if depth == 0 {
                return Ok(Some(bytes));
            }
        }
    }

    /// Turns one complete record into a conversation, or says why it cannot be used. Assistant
    /// turns before the first user turn are dropped and the rest kept, as the references' data
    /// scripts do (they drop a first turn not from the human): ShareGPT splits long
    /// conversations, and a continuation opens with the answer to a question in the part before.
    fn convert(bytes: &[u8]) -> std::result::Result<Conversation, SkipReason> {
        let raw: RawRecord = serde_json::from_slice(bytes).map_err(|_| SkipReason::Malformed)?;
        let mut messages = raw
            .conversations
            .into_iter()
            .map(|t| {
                let role = match t.from.as_str() {
                    "human" | "user" => "user",
                    "gpt" | "assistant" => "assistant",
                    "system" => "system",
                    _ => return Err(SkipReason::UnknownRole),
                };
                Ok(ChatMessage { role: role.to_string(), content: t.value })
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let first_user = messages.iter().position(|m| m.role == "user").ok_or(SkipReason::NoUserTurn)?;
        let opening: Vec<ChatMessage> = messages.drain(..first_user).collect();
        let dropped_opening_turns = opening.iter().filter(|m| m.role == "assistant").count();
        let messages: Vec<ChatMessage> =
            opening.into_iter().filter(|m| m.role != "assistant").chain(messages).collect();
        if !messages.iter().any(|m| m.role == "assistant") {
            return Err(SkipReason::NoAssistantTurn);
        }
        let turns = messages.iter().skip_while(|m| m.role == "system");
        if turns.enumerate().any(|(j, m)| m.role != ["user", "assistant"][j % 2]) {
            return Err(SkipReason::NotAlternating);
        }
        Ok(Conversation { id: raw.id, messages, dropped_opening_turns })
    }

    /// Scans to the next usable conversation; None at the end of the array or of the input.
    fn advance(&mut self) -> Result<Option<Conversation>> {
        while !self.done {
            let token = self.next_token()?;
            if !self.started {
                if token != Some(b'[') {
                    return Err(Error::format(&self.path, "(json)", "expected a top-level array of conversations"));
                }
                self.started = true;
                continue;
            }
            match token {
                Some(b',') => {}
                Some(b']') => {
                    self.report.closed = true;
                    self.done = true;
                }
                None => self.done = true,
                Some(b'{') => {
                    let Some(bytes) = self.object_bytes()? else {
                        self.done = true;
                        continue;
                    };
                    self.report.records += 1;
                    match Self::convert(&bytes) {
                        Ok(c) => {
                            self.report.usable += 1;
                            self.report.opened_by_assistant += usize::from(c.dropped_opening_turns > 0);
                            return Ok(Some(c));
                        }
                        Err(reason) => *self.report.skipped.entry(reason).or_default() += 1,
                    }
                }
                Some(other) => {
                    return Err(Error::format(
                        &self.path,
                        "(json)",
                        format!(
                            "unexpected {:?} at byte {} between records (expected an object)",
                            other as char, self.offset
                        ),
                    ))
                }
            }
        }
        Ok(None)
    }
}

impl<R: BufRead> Iterator for ShareGptReader<R> {
    type Item = Result<Conversation>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.advance();
        if item.is_err() {
            self.done = true;
        }
        item.transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> (Vec<Conversation>, ReadReport) {
        let mut r = ShareGptReader::new(text.as_bytes(), Path::new("test.json"));
        let convs = r.by_ref().collect::<Result<Vec<_>>>().expect("read");
        (convs, r.report)
    }

    const RECORDS: &str = r#"[
  {"id": "a", "conversations": [{"from": "human", "value": "hi {[\"quoted\"]}"}, {"from": "gpt", "value": "hello \\ }"}]},
  {"id": "b", "conversations": [{"from": "gpt", "value": "continued"}, {"from": "human", "value": "ok"}]},
  {"id": "b2", "conversations": [{"from": "system", "value": "s"}, {"from": "gpt", "value": "continued"}, {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]},
  {"id": "c", "conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
  {"id": "d", "conversations": [{"from": "human", "value": "only a question"}]},
  {"id": "e", "conversations": [{"from": "human", "value": "q"}, {"from": "bing", "value": "a"}]},
  {"id": "f", "conversations": []},
  {"id": 7, "conversations": []},
  {"id": "g", "conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]},
  {"id": "i", "conversations": [{"from": "human", "value": "x"}, {"from": "human", "value": "again"}, {"from": "gpt", "value": "y"}]}"#;

    #[test]
    fn truncated_file_recovers_complete_records_and_stops_cleanly() {
        let text =
            format!("{RECORDS},\n  {{\"id\": \"h\", \"conversations\": [{{\"from\": \"human\", \"value\": \"cut of");
        let (convs, report) = read(&text);
        assert_eq!(convs.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["a", "b2", "c", "g"]);
        assert_eq!(convs[0].messages[0], ChatMessage::new("user", "hi {[\"quoted\"]}"));
        assert_eq!(convs[0].messages[1], ChatMessage::new("assistant", "hello \\ }"));
        // The opening assistant turn is dropped, the system turn before it and the rest kept.
        let roles: Vec<&str> = convs[1].messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!((roles.as_slice(), convs[1].dropped_opening_turns), (["system", "user", "assistant"].as_slice(), 1));
        assert_eq!(convs[2].messages[0].role, "system");
        assert_eq!(report.records, 10);
        assert_eq!((report.usable, report.opened_by_assistant), (4, 1));
        let skipped: Vec<(SkipReason, usize)> = report.skipped.iter().map(|(r, n)| (*r, *n)).collect();
        assert_eq!(
            skipped,
            [
                (SkipReason::Malformed, 1),
                (SkipReason::UnknownRole, 1),
                (SkipReason::NoUserTurn, 1),
                (SkipReason::NoAssistantTurn, 2),
                (SkipReason::NotAlternating, 1)
            ]
        );
        assert!(!report.closed);
        assert!(report.truncated_bytes > 0);
    }

    #[test]
    fn complete_file_is_closed_and_cut_between_records_is_not_an_error() {
        let (convs, report) = read(&format!("{RECORDS}\n]\n"));
        assert_eq!(convs.len(), 4);
        assert!(report.closed);
        assert_eq!(report.truncated_bytes, 0);
        let (convs, report) = read(&format!("{RECORDS},"));
        assert_eq!((convs.len(), report.closed, report.truncated_bytes), (4, false, 0));
    }

    #[test]
    fn not_an_array_is_an_error_naming_the_file() {
        let mut r = ShareGptReader::new(&b"{\"id\": 1}"[..], Path::new("data.json"));
        let err = r.next().expect("an item").expect_err("not an array");
        assert!(err.to_string().contains("data.json"), "{err}");
        assert!(r.next().is_none());
        let mut r = ShareGptReader::new(&b"[{}, 12]"[..], Path::new("data.json"));
        let err = r.find_map(|item| item.err()).expect("an error");
        assert!(err.to_string().contains("byte"), "{err}");
    }
}
