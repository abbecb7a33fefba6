//! Watches an SFTP v3 subsystem channel (draft-ietf-secsh-filexfer-02; the
//! `scp` of OpenSSH 9 speaks it too) so the session recording can say which
//! files were touched and how many bytes moved. The relay forwards the bytes
//! untouched; this tap only reads a copy. File contents are never buffered:
//! WRITE and DATA packets are read up to their data length and the data is
//! counted and skipped, so a transfer of any size costs a few KiB at most.
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

const OPEN: u8 = 3;
const CLOSE: u8 = 4;
const READ: u8 = 5;
const WRITE: u8 = 6;
const LSTAT: u8 = 7;
const FSTAT: u8 = 8;
const SETSTAT: u8 = 9;
const FSETSTAT: u8 = 10;
const REMOVE: u8 = 13;
const MKDIR: u8 = 14;
const RMDIR: u8 = 15;
const RENAME: u8 = 18;
const STAT: u8 = 17;
const SYMLINK: u8 = 20;
const EXTENDED: u8 = 200;
const STATUS: u8 = 101;
const HANDLE: u8 = 102;
const DATA: u8 = 103;
const ATTRS: u8 = 105;
const ATTR_SIZE: u32 = 0x1;

/// Packets whose fields the tap reads. Every other type (INIT, VERSION, NAME
/// listings, ATTRS, ...) is skipped without buffering, whatever its size, so a
/// long directory listing cannot stop the tap.
const CLIENT_READS: &[u8] = &[
    OPEN, CLOSE, READ, LSTAT, FSTAT, SETSTAT, FSETSTAT, REMOVE, MKDIR, RMDIR, STAT, RENAME,
    SYMLINK, EXTENDED,
];
const SERVER_READS: &[u8] = &[STATUS, HANDLE, ATTRS];

const FXF_READ: u32 = 0x1;
/// WRITE, APPEND, CREAT, TRUNC: any of them means the file may change.
const FXF_CHANGES: u32 = 0x2 | 0x4 | 0x8 | 0x10;

const MAX_CONTROL: u32 = 64 * 1024;
/// OpenSSH's sftp-server refuses messages over 256 KiB; far beyond that is
/// garbage rather than a transfer.
const MAX_PACKET: u32 = 64 << 20;
const MAX_PATH: usize = 4096;
/// The draft caps handles at 256 bytes; longer ones are not worth tracking.
const MAX_HANDLE: usize = 256;
const MAX_HANDLES: usize = 1024;
const MAX_PENDING: usize = 4096;
/// File sizes seen in STAT answers, for server-side copies "to end of file".
const MAX_SIZES: usize = 256;

/// What the recording gets: one per finished file operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOp {
    /// A handle from OPEN was closed: bytes the client wrote / read through it.
    File {
        path: String,
        write: bool,
        read: bool,
        bytes_written: u64,
        bytes_read: u64,
    },
    Remove {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Mkdir {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Setstat {
        path: String,
    },
    Symlink {
        link: String,
        target: String,
    },
    /// hardlink@openssh.com: `link` now names the same file as `target`.
    Hardlink {
        link: String,
        target: String,
    },
    /// copy-data: the server copied between two open files; `bytes` is None
    /// when it copied "to end of file" and the source's size was never seen.
    Copy {
        from: String,
        to: String,
        bytes: Option<u64>,
    },
    /// The stream could not be parsed (bad length, oversized control packet):
    /// the tap stops parsing this channel; the relay itself carries on.
    Unparsable {
        reason: String,
    },
}

/// Incremental SFTP observer: feed it both directions of one channel.
#[derive(Default)]
pub struct SftpTap {
    requests: Decoder,
    responses: Decoder,
    /// Request id → what its answer resolves, with an insertion number so the
    /// oldest can go when answers never come.
    pending: HashMap<u32, (u64, Pending)>,
    /// Open file handles → (insertion number, the File op being counted).
    handles: HashMap<Vec<u8>, (u64, FileOp)>,
    /// Path → size from the latest STAT / LSTAT / FSTAT answer.
    sizes: HashMap<String, u64>,
    seq: u64,
    inert: bool,
}

enum Pending {
    Open { path: String, pflags: u32 },
    Read(Vec<u8>),
    Stat(String),
}

impl SftpTap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes the client sent (requests). Returns finished operations.
    pub fn client(&mut self, bytes: &[u8]) -> Vec<FileOp> {
        self.feed(bytes, true)
    }

    /// Bytes the server sent (responses).
    pub fn server(&mut self, bytes: &[u8]) -> Vec<FileOp> {
        self.feed(bytes, false)
    }

    /// Channel closed: report files still open (as File with what was counted).
    /// The tap is inert afterwards.
    pub fn finish(&mut self) -> Vec<FileOp> {
        let mut open: Vec<_> = std::mem::take(&mut self.handles).into_values().collect();
        open.sort_by_key(|(seq, _)| *seq);
        *self = Self {
            inert: true,
            ..Self::default()
        };
        open.into_iter().map(|(_, op)| op).collect()
    }

    /// Bytes held by the packet decoders (tests check transfers stay small).
    pub fn buffered(&self) -> usize {
        self.requests.buf.capacity() + self.responses.buf.capacity()
    }

    fn feed(&mut self, bytes: &[u8], client: bool) -> Vec<FileOp> {
        let mut ops = Vec::new();
        if self.inert {
            return ops;
        }
        let mut frames = Vec::new();
        let decoder = if client {
            &mut self.requests
        } else {
            &mut self.responses
        };
        let res = decoder.feed(bytes, client, &mut frames);
        for f in frames {
            ops.extend(if client {
                self.request(f.ty, &f.body, f.data)
            } else {
                self.response(f.ty, &f.body, f.data)
            });
        }
        if let Err(reason) = res {
            let side = if client { "client" } else { "server" };
            ops.push(FileOp::Unparsable {
                reason: format!("{side}: {reason}"),
            });
            // Files opened so far were still touched: keep them in the record.
            ops.extend(self.finish());
        }
        ops
    }

    fn request(&mut self, ty: u8, body: &[u8], data: u32) -> Option<FileOp> {
        let mut r = Rd(body);
        let id = r.u32()?;
        match ty {
            OPEN => {
                let path = r.path()?;
                let pflags = r.u32()?;
                self.track(id, Pending::Open { path, pflags })
            }
            READ => {
                let handle = r.bytes()?;
                // Reads on directories or untracked handles resolve nothing.
                if self.handles.contains_key(handle) {
                    return self.track(id, Pending::Read(handle.to_vec()));
                }
                None
            }
            WRITE => {
                if let (_, FileOp::File { bytes_written, .. }) = self.handles.get_mut(r.bytes()?)? {
                    *bytes_written = bytes_written.saturating_add(data.into());
                }
                None
            }
            // Reported at the request: the server's STATUS adds nothing the audit needs.
            CLOSE => self.handles.remove(r.bytes()?).map(|(_, op)| op),
            SETSTAT => Some(FileOp::Setstat { path: r.path()? }),
            // `put -p` sets times and modes through the open handle.
            FSETSTAT => Some(FileOp::Setstat {
                path: self.handle_path(r.bytes()?),
            }),
            STAT | LSTAT => {
                let path = r.path()?;
                self.track(id, Pending::Stat(path))
            }
            FSTAT => {
                let path = self.handle_path(r.bytes()?);
                self.track(id, Pending::Stat(path))
            }
            REMOVE => Some(FileOp::Remove { path: r.path()? }),
            MKDIR => Some(FileOp::Mkdir { path: r.path()? }),
            RMDIR => Some(FileOp::Rmdir { path: r.path()? }),
            RENAME => Some(FileOp::Rename {
                from: r.path()?,
                to: r.path()?,
            }),
            // OpenSSH swapped the draft's order (target first) and kept it for
            // compatibility, see its PROTOCOL file; both ends here are OpenSSH.
            SYMLINK => {
                let target = r.path()?;
                Some(FileOp::Symlink {
                    link: r.path()?,
                    target,
                })
            }
            EXTENDED => self.extended(&mut r),
            _ => None,
        }
    }

    /// The extensions the gate lets through (see `sftp_gate`) that change files.
    fn extended(&mut self, r: &mut Rd) -> Option<FileOp> {
        match r.bytes()? {
            b"posix-rename@openssh.com" => Some(FileOp::Rename {
                from: r.path()?,
                to: r.path()?,
            }),
            b"hardlink@openssh.com" => {
                let target = r.path()?;
                Some(FileOp::Hardlink {
                    link: r.path()?,
                    target,
                })
            }
            b"lsetstat@openssh.com" => Some(FileOp::Setstat { path: r.path()? }),
            b"copy-data" => {
                let from = r.bytes()?.to_vec();
                let (offset, len) = (r.u64()?, r.u64()?);
                let to = r.bytes()?.to_vec();
                let (from_path, to_path) = (self.handle_path(&from), self.handle_path(&to));
                let left = self.sizes.get(&from_path).map(|s| s.saturating_sub(offset));
                let bytes = match (len, left) {
                    (0, left) => left,
                    (len, Some(left)) => Some(len.min(left)),
                    (len, None) => Some(len),
                };
                // The server moved the bytes: count them on both files too.
                let n = bytes.unwrap_or(0);
                if let Some((_, FileOp::File { bytes_read, .. })) = self.handles.get_mut(&from) {
                    *bytes_read = bytes_read.saturating_add(n);
                }
                if let Some((_, FileOp::File { bytes_written, .. })) = self.handles.get_mut(&to) {
                    *bytes_written = bytes_written.saturating_add(n);
                }
                Some(FileOp::Copy {
                    from: from_path,
                    to: to_path,
                    bytes,
                })
            }
            _ => None,
        }
    }

    /// The path a handle was opened with (directories and untracked handles
    /// are not named: the record says so).
    fn handle_path(&self, handle: &[u8]) -> String {
        match self.handles.get(handle) {
            Some((_, FileOp::File { path, .. })) => path.clone(),
            _ => "(an untracked handle)".into(),
        }
    }

    fn response(&mut self, ty: u8, body: &[u8], data: u32) -> Option<FileOp> {
        let mut r = Rd(body);
        let (_, pending) = self.pending.remove(&r.u32()?)?;
        match (ty, pending) {
            (HANDLE, Pending::Open { path, pflags }) => {
                let handle = r.bytes()?;
                let full = self.handles.len() >= MAX_HANDLES && !self.handles.contains_key(handle);
                let file = opened(path, pflags);
                // Untrackable: the file is still named now, its byte counts unknown.
                if handle.len() > MAX_HANDLE || full {
                    return Some(file);
                }
                self.seq += 1;
                // A handle reused without a CLOSE seen: report the old file, do not lose it.
                let old = self.handles.insert(handle.to_vec(), (self.seq, file));
                old.map(|(_, op)| op)
            }
            (DATA, Pending::Read(handle)) => {
                if let (_, FileOp::File { bytes_read, .. }) = self.handles.get_mut(&handle)? {
                    *bytes_read = bytes_read.saturating_add(data.into());
                }
                None
            }
            (ATTRS, Pending::Stat(path)) => {
                let flags = r.u32()?;
                if flags & ATTR_SIZE != 0 {
                    if self.sizes.len() >= MAX_SIZES && !self.sizes.contains_key(&path) {
                        self.sizes.clear();
                    }
                    self.sizes.insert(path, r.u64()?);
                }
                None
            }
            // STATUS (failed OPEN, EOF on READ) or a mismatched answer: the request is over.
            _ => None,
        }
    }

    /// Returns the file of an OPEN pushed out unanswered, so a flood of
    /// requests cannot keep an opened file out of the record.
    fn track(&mut self, id: u32, p: Pending) -> Option<FileOp> {
        // Peers keep a few dozen requests in flight; a full map means answers
        // went missing, and a linear scan then is cheap enough.
        let mut evicted = None;
        if self.pending.len() >= MAX_PENDING && !self.pending.contains_key(&id) {
            let oldest = self.pending.iter().min_by_key(|(_, (seq, _))| *seq);
            if let Some(oldest) = oldest.map(|(id, _)| *id) {
                evicted = self.pending.remove(&oldest);
            }
        }
        self.seq += 1;
        self.pending.insert(id, (self.seq, p));
        match evicted {
            Some((_, Pending::Open { path, pflags })) => Some(opened(path, pflags)),
            _ => None,
        }
    }
}

fn opened(path: String, pflags: u32) -> FileOp {
    FileOp::File {
        path,
        write: pflags & FXF_CHANGES != 0,
        read: pflags & FXF_READ != 0,
        bytes_written: 0,
        bytes_read: 0,
    }
}

/// One packet as far as the tap keeps it: the whole body of a control packet,
/// or the fields before the data of WRITE / DATA, with the data length.
struct Frame {
    ty: u8,
    body: Vec<u8>,
    data: u32,
}

#[derive(Default, Clone, Copy)]
enum Stage {
    #[default]
    Head,
    /// Buffering the body (or, when `stream`, only the fields before the data).
    Body {
        ty: u8,
        stream: bool,
    },
    Skip,
}

/// Splits one direction into packets, whatever the chunking.
#[derive(Default)]
struct Decoder {
    buf: Vec<u8>,
    /// Bytes of the current packet's body not yet consumed.
    left: u32,
    stage: Stage,
}

impl Decoder {
    /// Frames completed before an error are still delivered.
    fn feed(&mut self, mut input: &[u8], client: bool, out: &mut Vec<Frame>) -> Result<(), String> {
        let (streamed, kept) = if client {
            (WRITE, CLIENT_READS)
        } else {
            (DATA, SERVER_READS)
        };
        loop {
            match self.stage {
                Stage::Head => {
                    fill(&mut self.buf, &mut input, 5);
                    let Some(&[a, b, c, d, ty]) = self.buf.first_chunk::<5>() else {
                        return Ok(());
                    };
                    self.buf.clear();
                    let len = u32::from_be_bytes([a, b, c, d]);
                    if len == 0 || len > MAX_PACKET {
                        return Err(format!("bad packet length {len}"));
                    }
                    self.left = len - 1;
                    let stream = ty == streamed;
                    self.stage = if stream || kept.contains(&ty) {
                        Stage::Body { ty, stream }
                    } else {
                        Stage::Skip
                    };
                }
                Stage::Body { ty, stream } => {
                    let need = if stream {
                        prefix_len(ty, &self.buf)
                    } else {
                        u64::from(self.left)
                    };
                    // Checked before buffering, so garbage never makes us allocate.
                    if need > u64::from(self.left.min(MAX_CONTROL)) {
                        return Err(format!(
                            "packet type {ty} of {} bytes is too long",
                            self.left
                        ));
                    }
                    fill(&mut self.buf, &mut input, need as usize);
                    if (self.buf.len() as u64) < need {
                        return Ok(());
                    }
                    if stream && prefix_len(ty, &self.buf) != need {
                        continue; // WRITE: the handle length just arrived
                    }
                    let data = match self.buf.last_chunk::<4>() {
                        Some(b) if stream => u32::from_be_bytes(*b),
                        _ => 0,
                    };
                    self.left -= need as u32;
                    if data > self.left {
                        return Err(format!("packet type {ty}: data longer than packet"));
                    }
                    let body = std::mem::take(&mut self.buf);
                    out.push(Frame { ty, body, data });
                    self.stage = Stage::Skip;
                }
                Stage::Skip => {
                    let n = input.len().min(self.left as usize);
                    input = input.get(n..).unwrap_or_default();
                    self.left -= n as u32;
                    if self.left > 0 {
                        return Ok(());
                    }
                    self.stage = Stage::Head;
                }
            }
        }
    }
}

/// Bytes before the data in WRITE (id, handle, offset, length) or DATA (id,
/// length), as far as `buf` tells: 8 until WRITE's handle length is known.
fn prefix_len(ty: u8, buf: &[u8]) -> u64 {
    match (ty, Rd(buf.get(4..).unwrap_or_default()).u32()) {
        (WRITE, Some(handle)) => 4 + 4 + u64::from(handle) + 8 + 4,
        _ => 8,
    }
}

/// Moves bytes from `input` to `buf` until `buf` holds `want`.
fn fill(buf: &mut Vec<u8>, input: &mut &[u8], want: usize) {
    let n = want.saturating_sub(buf.len()).min(input.len());
    let (head, rest) = input.split_at(n);
    buf.extend_from_slice(head);
    *input = rest;
}

/// Reads SFTP fields; `None` when the body is short.
struct Rd<'a>(&'a [u8]);

impl<'a> Rd<'a> {
    fn u32(&mut self) -> Option<u32> {
        let (n, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_be_bytes(*n))
    }

    fn u64(&mut self) -> Option<u64> {
        let (n, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_be_bytes(*n))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        let (s, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(s)
    }

    fn path(&mut self) -> Option<String> {
        let raw = self.bytes()?;
        let mut s = String::from_utf8_lossy(raw.get(..MAX_PATH).unwrap_or(raw)).into_owned();
        // Replacement characters can push a lossy string past the cap again.
        let mut end = s.len().min(MAX_PATH);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        Some(s)
    }
}

#[cfg(test)]
#[path = "sftp_tests.rs"]
mod tests;
