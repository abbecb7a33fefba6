//! Watches a legacy scp (`scp -O`, the rcp protocol) exec channel so the
//! recording names each file and its size like an SFTP transfer does. The
//! side that sends files (the client for `scp -t`, the server for `scp -f`)
//! writes `C<mode> <size> <name>\n`, the file's bytes and a `\0`; `D…`/`E`
//! enter and leave directories; `T…` carries times. Only those lines are
//! kept: file bytes are counted and skipped, never buffered.
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use super::sftp::FileOp;
use crate::policy::shell::{self, Token};

/// Longest control line kept (a name is at most a few KiB).
const MAX_LINE: usize = 8192;
/// Directory nesting followed; deeper trees are still counted, flatter.
const MAX_DEPTH: usize = 64;

/// `scp -t PATH` (files arrive at PATH) or `scp -f PATH` (files leave PATH),
/// when `command` is exactly an scp in rcp mode.
pub fn scp_mode(command: &str) -> Option<ScpTap> {
    let tokens = shell::split(command).ok()?;
    let mut words = Vec::new();
    for t in tokens {
        match t {
            Token::Word(w) => words.push(w),
            Token::Op(_) => return None,
        }
    }
    let (program, args) = words.split_first()?;
    if program.rsplit('/').next() != Some("scp") {
        return None;
    }
    let (mut flags, mut paths, mut options_done) = (String::new(), Vec::new(), false);
    for a in args {
        match a.strip_prefix('-') {
            Some("-") if !options_done => options_done = true,
            Some(f) if !options_done => flags.push_str(f),
            _ => paths.push(a.as_str()),
        }
    }
    let write = match (flags.contains('t'), flags.contains('f')) {
        (true, false) => true,
        (false, true) => false,
        _ => return None,
    };
    Some(ScpTap {
        root: paths.join(" "),
        write,
        to_dir: flags.contains('d'),
        ..ScpTap::default()
    })
}

#[derive(Default)]
enum Stage {
    #[default]
    Line,
    Data {
        path: String,
        size: u64,
        left: u64,
    },
    /// After a file's bytes: the sender's `\0` (or an error line).
    Ack,
    Inert,
}

#[derive(Default)]
pub struct ScpTap {
    root: String,
    /// Files arrive (`-t`): the client sends; else the server does.
    pub write: bool,
    /// `-d`: the target is a directory.
    to_dir: bool,
    dirs: Vec<String>,
    line: Vec<u8>,
    stage: Stage,
}

impl ScpTap {
    /// Bytes from the sending side. Returns finished files.
    pub fn feed(&mut self, mut input: &[u8]) -> Vec<FileOp> {
        let mut ops = Vec::new();
        while !input.is_empty() {
            match &mut self.stage {
                Stage::Inert => break,
                Stage::Line => {
                    let end = input.iter().position(|b| *b == b'\n');
                    let (part, rest) = match end {
                        Some(i) => (input.get(..i).unwrap_or_default(), input.get(i + 1..)),
                        None => (input, None),
                    };
                    if self.line.len() + part.len() > MAX_LINE {
                        ops.push(FileOp::Unparsable {
                            reason: "an scp control line is too long".into(),
                        });
                        self.stage = Stage::Inert;
                        break;
                    }
                    self.line.extend_from_slice(part);
                    let Some(rest) = rest else { break };
                    input = rest;
                    let line = std::mem::take(&mut self.line);
                    if let Err(reason) = self.control(&line) {
                        ops.push(FileOp::Unparsable { reason });
                        self.stage = Stage::Inert;
                    }
                }
                Stage::Data { left, .. } => {
                    let n = (input.len() as u64).min(*left);
                    input = input.get(n as usize..).unwrap_or_default();
                    *left -= n;
                    if *left == 0 {
                        if let Stage::Data { path, size, .. } =
                            std::mem::replace(&mut self.stage, Stage::Ack)
                        {
                            ops.push(self.file(path, size));
                        }
                    }
                }
                Stage::Ack => {
                    if input.first() == Some(&0) {
                        input = input.get(1..).unwrap_or_default();
                    }
                    self.stage = Stage::Line;
                }
            }
        }
        ops
    }

    /// The stream stopped parsing as scp (or the channel closed).
    pub fn inert(&self) -> bool {
        matches!(self.stage, Stage::Inert)
    }

    /// Channel closed: a file cut short is still reported, with what moved.
    pub fn finish(&mut self) -> Vec<FileOp> {
        let stage = std::mem::replace(&mut self.stage, Stage::Inert);
        match stage {
            Stage::Data { path, size, left } => vec![self.file(path, size - left)],
            _ => Vec::new(),
        }
    }

    fn control(&mut self, line: &[u8]) -> Result<(), String> {
        let text = String::from_utf8_lossy(line);
        match line.first() {
            // Error or warning lines from either side; nothing to record.
            None | Some(1) | Some(2) | Some(b'T') => Ok(()),
            Some(b'E') => {
                self.dirs.pop();
                Ok(())
            }
            Some(b'C') | Some(b'D') => {
                let mut parts = text.get(1..).unwrap_or_default().splitn(3, ' ');
                let (Some(_mode), Some(size), Some(name)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err("an scp C/D line without mode, size and name".into());
                };
                let size: u64 = size
                    .parse()
                    .map_err(|_| "an scp C line with a size that is not a number".to_string())?;
                if line.first() == Some(&b'D') {
                    if self.dirs.len() < MAX_DEPTH {
                        self.dirs.push(name.to_string());
                    }
                    return Ok(());
                }
                self.stage = Stage::Data {
                    path: self.path(name),
                    size,
                    left: size,
                };
                Ok(())
            }
            Some(_) => Err("the scp stream has a line that is not C, D, E or T".into()),
        }
    }

    /// Where a file named `name` in the current directory lands or comes from.
    fn path(&self, name: &str) -> String {
        let mut rel: Vec<&str> = self.dirs.iter().map(String::as_str).collect();
        rel.push(name);
        let rel = rel.join("/");
        let root = self.root.trim_end_matches('/');
        if self.write {
            // `scp -t FILE` writes FILE itself; a directory target gets the name.
            if self.dirs.is_empty() && !self.to_dir && !self.root.ends_with('/') {
                return self.root.clone();
            }
            return format!("{root}/{rel}");
        }
        // `scp -f /a/b` sends `b` (a file, or `D… b` for a tree): name it from /a.
        let first = rel.split('/').next().unwrap_or_default();
        match root.rsplit_once('/') {
            Some((parent, last)) if last == first => format!("{parent}/{rel}"),
            None if root == first => rel,
            _ => format!("{root}/{rel}"),
        }
    }

    fn file(&self, path: String, bytes: u64) -> FileOp {
        FileOp::File {
            path,
            write: self.write,
            read: !self.write,
            bytes_written: if self.write { bytes } else { 0 },
            bytes_read: if self.write { 0 } else { bytes },
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn file(path: &str, write: bool, n: u64) -> FileOp {
        FileOp::File {
            path: path.into(),
            write,
            read: !write,
            bytes_written: if write { n } else { 0 },
            bytes_read: if write { 0 } else { n },
        }
    }

    fn feed_all(tap: &mut ScpTap, bytes: &[u8], chunk: usize) -> Vec<FileOp> {
        let mut ops: Vec<FileOp> = bytes.chunks(chunk).flat_map(|c| tap.feed(c)).collect();
        ops.extend(tap.finish());
        ops
    }

    #[test]
    fn commands_in_rcp_mode() {
        assert!(scp_mode("scp -t /tmp/x").unwrap().write);
        assert!(!scp_mode("/usr/bin/scp -r -p -f -- -odd").unwrap().write);
        assert_eq!(scp_mode("scp -f -- -odd").unwrap().root, "-odd");
        for not in [
            "scp a b",
            "echo scp -t x",
            "scp -t x; rm y",
            "scp -tf x",
            "ls",
        ] {
            assert!(scp_mode(not).is_none(), "{not}");
        }
    }

    #[test]
    fn uploads_downloads_and_trees_at_every_split() {
        let mut stream = b"T1 0 1 0\nC0644 5 a.bin\nhello\0".to_vec();
        stream.extend_from_slice(b"D0755 0 d\nC0600 3 in\nabc\0C0600 0 empty\n\0E\n");
        for chunk in [1, 2, 5, 1000] {
            let mut tap = scp_mode("scp -r -d -t /srv/").unwrap();
            assert_eq!(
                feed_all(&mut tap, &stream, chunk),
                vec![
                    file("/srv/a.bin", true, 5),
                    file("/srv/d/in", true, 3),
                    file("/srv/d/empty", true, 0)
                ],
                "chunk {chunk}"
            );
        }
        let mut tap = scp_mode("scp -t /tmp/target.bin").unwrap();
        assert_eq!(
            feed_all(&mut tap, b"C0644 5 local.bin\nhello\0", 3),
            vec![file("/tmp/target.bin", true, 5)]
        );
        let mut tap = scp_mode("scp -f /tmp/x.bin").unwrap();
        assert_eq!(
            feed_all(&mut tap, b"C0644 4 x.bin\nabcd\0", 2),
            vec![file("/tmp/x.bin", false, 4)]
        );
        let mut tap = scp_mode("scp -r -f /var/log").unwrap();
        assert_eq!(
            feed_all(&mut tap, b"D0755 0 log\nC0644 2 a\nxy\0E\n", 4),
            vec![file("/var/log/a", false, 2)]
        );
    }

    #[test]
    fn big_files_are_counted_cut_files_reported_garbage_stops() {
        let mut tap = scp_mode("scp -t /big").unwrap();
        assert!(tap.feed(b"C0644 1000000000 big\n").is_empty());
        for _ in 0..10 {
            assert!(tap.feed(&[7; 65536]).is_empty());
        }
        assert!(tap.line.capacity() < 1024);
        assert_eq!(tap.finish(), vec![file("/big", true, 655_360)]);

        let mut tap = scp_mode("scp -t /x").unwrap();
        let ops = tap.feed(b"\x01scp: warning\nZ what\nC0644 1 y\nq\0");
        assert!(matches!(&ops[..], [FileOp::Unparsable { .. }]), "{ops:?}");
        assert!(tap.inert());
        let mut tap = scp_mode("scp -t /x").unwrap();
        let ops = tap.feed(&vec![b'C'; MAX_LINE + 1]);
        assert!(matches!(&ops[..], [FileOp::Unparsable { .. }]), "{ops:?}");
        let mut tap = scp_mode("scp -t /x").unwrap();
        let ops = tap.feed(b"C0644 many y\n");
        assert!(matches!(&ops[..], [FileOp::Unparsable { .. }]), "{ops:?}");
    }
}
