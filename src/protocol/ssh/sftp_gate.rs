//! The SFTP channel's gate: client requests whose effect the recording could
//! not name never reach the server. Known request types stream through
//! untouched (a WRITE of any size is never buffered); EXTENDED requests and
//! unknown types are held (they are small) until their name is known, then
//! forwarded if listed or answered here with SSH_FX_OP_UNSUPPORTED.
//! `ServerFrames` finds packet boundaries in the server's stream, so such an
//! answer is slipped in between two whole server packets.
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

const EXTENDED: u8 = 200;
const STATUS: u8 = 101;
const OP_UNSUPPORTED: u32 = 8;
/// INIT (1) and OPEN (3) to SYMLINK (20): every SFTP v3 request.
const PLAIN: std::ops::RangeInclusive<u8> = 3..=20;
const INIT: u8 = 1;
/// Held packets are control packets; anything longer is not SFTP.
const MAX_HELD: u32 = 64 * 1024;

/// Extensions that may reach the server. The ones that change files are
/// recorded by the tap (`sftp.rs`); the rest only read or flush.
pub const ALLOWED_EXTENSIONS: &[&str] = &[
    // Recorded as file events.
    "posix-rename@openssh.com",
    "hardlink@openssh.com",
    "lsetstat@openssh.com",
    "copy-data",
    // Read-only, or fsync of data whose WRITEs were already recorded.
    "fsync@openssh.com",
    "statvfs@openssh.com",
    "fstatvfs@openssh.com",
    "limits@openssh.com",
    "expand-path@openssh.com",
    "home-directory",
    "users-groups-by-id@openssh.com",
];

/// What one chunk of client data became.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Gated {
    /// Bytes for the server, in order.
    pub forward: Vec<u8>,
    /// STATUS packets for the client (whole packets).
    pub replies: Vec<u8>,
    /// What was refused, for the recording ("extension NAME", "request type N").
    pub refused: Vec<String>,
}

#[derive(Default)]
enum Stage {
    #[default]
    Head,
    Pass(u32),
    Hold(u32),
}

/// Splits the client's stream into packets, whatever the chunking.
#[derive(Default)]
pub struct SftpGate {
    buf: Vec<u8>,
    stage: Stage,
}

impl SftpGate {
    /// An error means the stream is not SFTP as far as the gate can tell:
    /// the caller closes the channel (nothing more can be vouched for).
    pub fn client(&mut self, mut input: &[u8]) -> Result<Gated, String> {
        let mut out = Gated::default();
        loop {
            match self.stage {
                Stage::Head => {
                    take(&mut self.buf, &mut input, 5);
                    let Some(&[a, b, c, d, ty]) = self.buf.first_chunk::<5>() else {
                        return Ok(out);
                    };
                    let len = u32::from_be_bytes([a, b, c, d]);
                    if len == 0 {
                        return Err("an SFTP packet of length 0".into());
                    }
                    if ty == INIT || PLAIN.contains(&ty) {
                        out.forward.append(&mut self.buf);
                        self.stage = Stage::Pass(len - 1);
                    } else if len - 1 > MAX_HELD {
                        return Err(format!(
                            "an SFTP packet of type {ty} and {len} bytes is too long"
                        ));
                    } else {
                        self.stage = Stage::Hold(len - 1);
                    }
                }
                Stage::Pass(left) => {
                    let n = input.len().min(left as usize);
                    let (head, rest) = input.split_at(n);
                    out.forward.extend_from_slice(head);
                    input = rest;
                    if n < left as usize {
                        self.stage = Stage::Pass(left - n as u32);
                        return Ok(out);
                    }
                    self.stage = Stage::Head;
                }
                Stage::Hold(len) => {
                    take(&mut self.buf, &mut input, 5 + len as usize);
                    if self.buf.len() < 5 + len as usize {
                        return Ok(out);
                    }
                    let packet = std::mem::take(&mut self.buf);
                    self.stage = Stage::Head;
                    match refusal(&packet) {
                        None => out.forward.extend_from_slice(&packet),
                        Some((id, what)) => {
                            out.replies.extend_from_slice(&unsupported(id, &what));
                            out.refused.push(what);
                        }
                    }
                }
            }
        }
    }
}

/// None when a held packet may pass; else its request id and what it was.
fn refusal(packet: &[u8]) -> Option<(u32, String)> {
    let ty = *packet.get(4)?;
    let body = packet.get(5..).unwrap_or_default();
    let id = body
        .first_chunk::<4>()
        .map(|b| u32::from_be_bytes(*b))
        .unwrap_or(0);
    if ty != EXTENDED {
        return Some((id, format!("request type {ty}")));
    }
    let name = body
        .get(4..8)
        .and_then(|n| n.first_chunk::<4>())
        .map(|n| u32::from_be_bytes(*n) as usize)
        .and_then(|n| body.get(8..8 + n))
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    if ALLOWED_EXTENSIONS.iter().any(|a| *a == name) {
        return None;
    }
    let shown: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
    Some((id, format!("extension {shown:?}")))
}

fn unsupported(id: u32, what: &str) -> Vec<u8> {
    let msg = format!("custody: {what} is not allowed through this gateway");
    let mut body = Vec::with_capacity(msg.len() + 17);
    body.push(STATUS);
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(&OP_UNSUPPORTED.to_be_bytes());
    body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    body.extend_from_slice(msg.as_bytes());
    body.extend_from_slice(&0u32.to_be_bytes());
    let mut packet = (body.len() as u32).to_be_bytes().to_vec();
    packet.append(&mut body);
    packet
}

fn take(buf: &mut Vec<u8>, input: &mut &[u8], want: usize) {
    let n = want.saturating_sub(buf.len()).min(input.len());
    let (head, rest) = input.split_at(n);
    buf.extend_from_slice(head);
    *input = rest;
}

/// Packet boundaries in the server's stream.
#[derive(Default)]
pub struct ServerFrames {
    head: Vec<u8>,
    left: u32,
    /// The server's first packet (VERSION) went by: nothing is answered before it.
    started: bool,
}

impl ServerFrames {
    /// Between two packets now (nothing of a packet pending).
    pub fn at_boundary(&self) -> bool {
        self.started && self.between()
    }

    fn between(&self) -> bool {
        self.head.is_empty() && self.left == 0
    }

    /// Consumes `data`; returns the first offset in it (0..=len) where a
    /// packet boundary lies, if any.
    pub fn first_boundary(&mut self, mut data: &[u8]) -> Option<usize> {
        let total = data.len();
        let mut first = self.at_boundary().then_some(0);
        while !data.is_empty() {
            if self.left > 0 {
                let n = data.len().min(self.left as usize);
                data = data.get(n..).unwrap_or_default();
                self.left -= n as u32;
            } else {
                take(&mut self.head, &mut data, 4);
                let Some(len) = self.head.first_chunk::<4>() else {
                    break;
                };
                self.left = u32::from_be_bytes(*len);
                self.head.clear();
            }
            if self.between() {
                self.started = true;
                if first.is_none() {
                    first = Some(total - data.len());
                }
            }
        }
        first
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pkt(ty: u8, body: &[u8]) -> Vec<u8> {
        [&(body.len() as u32 + 1).to_be_bytes()[..], &[ty], body].concat()
    }
    fn s(x: &[u8]) -> Vec<u8> {
        [&(x.len() as u32).to_be_bytes()[..], x].concat()
    }
    fn ext(id: u32, name: &str, rest: &[u8]) -> Vec<u8> {
        pkt(
            EXTENDED,
            &[&id.to_be_bytes()[..], &s(name.as_bytes()), rest].concat(),
        )
    }

    fn gate_all(gate: &mut SftpGate, input: &[u8], chunk: usize) -> Gated {
        let mut all = Gated::default();
        for piece in input.chunks(chunk.max(1)) {
            let mut g = gate.client(piece).unwrap();
            all.forward.append(&mut g.forward);
            all.replies.append(&mut g.replies);
            all.refused.append(&mut g.refused);
        }
        all
    }

    #[test]
    fn known_requests_pass_unknown_extensions_get_op_unsupported() {
        let write = pkt(
            6,
            &[&7u32.to_be_bytes()[..], &s(b"h"), &[0; 8], &s(&[1; 300])].concat(),
        );
        let hard = ext(8, "hardlink@openssh.com", &[s(b"/a"), s(b"/b")].concat());
        let evil = ext(9, "evil@example.com", &s(b"/x"));
        let link21 = pkt(21, &10u32.to_be_bytes());
        let input = [
            pkt(1, &3u32.to_be_bytes()),
            write.clone(),
            hard.clone(),
            evil,
            link21,
        ]
        .concat();
        for chunk in [1, 2, 3, 7, 64, 10_000] {
            let mut gate = SftpGate::default();
            let g = gate_all(&mut gate, &input, chunk);
            assert_eq!(
                g.forward,
                [pkt(1, &3u32.to_be_bytes()), write.clone(), hard.clone()].concat(),
                "chunk {chunk}"
            );
            assert_eq!(
                g.refused,
                vec!["extension \"evil@example.com\"", "request type 21"]
            );
            let msg9 =
                "custody: extension \"evil@example.com\" is not allowed through this gateway";
            let msg10 = "custody: request type 21 is not allowed through this gateway";
            let want = [
                pkt(
                    STATUS,
                    &[
                        &9u32.to_be_bytes()[..],
                        &8u32.to_be_bytes(),
                        &s(msg9.as_bytes()),
                        &s(b""),
                    ]
                    .concat(),
                ),
                pkt(
                    STATUS,
                    &[
                        &10u32.to_be_bytes()[..],
                        &8u32.to_be_bytes(),
                        &s(msg10.as_bytes()),
                        &s(b""),
                    ]
                    .concat(),
                ),
            ]
            .concat();
            assert_eq!(g.replies, want);
        }
    }

    #[test]
    fn oversized_held_packets_and_zero_lengths_are_errors() {
        let mut gate = SftpGate::default();
        let mut head = (1u32 << 20).to_be_bytes().to_vec();
        head.push(EXTENDED);
        assert!(gate.client(&head).is_err());
        assert!(SftpGate::default().client(&[0, 0, 0, 0, 3]).is_err());
        // A big WRITE streams: never held, never an error.
        let mut gate = SftpGate::default();
        let mut head = (8u32 << 20).to_be_bytes().to_vec();
        head.push(6);
        assert_eq!(gate.client(&head).unwrap().forward, head);
        assert_eq!(gate.client(&[0; 4096]).unwrap().forward.len(), 4096);
    }

    #[test]
    fn server_boundaries() {
        let a = pkt(STATUS, &[0; 10]);
        let b = pkt(103, &[1; 40]);
        let stream = [a.clone(), b.clone()].concat();
        let mut f = ServerFrames::default();
        assert!(!f.at_boundary(), "nothing before the server's first packet");
        assert_eq!(f.first_boundary(&a), Some(a.len()));
        assert!(f.at_boundary());
        assert_eq!(f.first_boundary(&stream[..3]), Some(0));
        assert!(!f.at_boundary());
        assert_eq!(f.first_boundary(&stream[3..20]), Some(a.len() - 3));
        assert_eq!(f.first_boundary(&stream[20..30]), None);
        assert_eq!(f.first_boundary(&stream[30..]), Some(stream.len() - 30));
        assert!(f.at_boundary());
    }
}
