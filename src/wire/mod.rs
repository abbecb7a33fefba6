//! What client and gateway agree on: header names, tunnel close codes, and
//! the CSV form of an exec answer.

pub mod csv;

/// Every `/v1` answer names its audit id here.
pub const AUDIT_HEADER: &str = "x-custody-audit-id";
/// A delegation token (the CLI sets it from CUSTODY_DELEGATION).
pub const DELEGATION_HEADER: &str = "x-custody-delegation";
/// An approved review the request relies on (CLI: --review / CUSTODY_REVIEW).
pub const REVIEW_HEADER: &str = "x-custody-review";

/// Read buffer of each tunnel WebSocket, both ends. tungstenite zero-fills
/// its whole free read buffer before every read (128 KiB by default): on a
/// query of 100 bytes that was most of the instructions per round trip and
/// 128 KiB resident per session. 8 KiB reads as much per call as socat
/// does, and a larger frame still grows the buffer to fit it whole.
pub const TUNNEL_READ_BUFFER: usize = 8 * 1024;

/// Close codes (RFC 6455) a tunnel ends with.
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_PROTOCOL: u16 = 1002;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_ERROR: u16 = 1011;

/// The close reason of a tunnel the client itself ended: `custody connect`
/// does not report it as an error.
pub const CLIENT_CLOSED: &str = "client closed the tunnel";

/// The close reason of an SSH tunnel whose SSH session ended normally
/// (either side may notice first): not an error either.
pub const SSH_ENDED: &str = "ssh session ended";
