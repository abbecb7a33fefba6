//! Feeds arbitrary bytes, split at arbitrary points, to the PostgreSQL
//! startup decoder and the frame scanner: they must never panic, and
//! frames they pass must come out byte for byte.
#![no_main]

use bytes::BytesMut;
use custody::protocol::postgres::codec;
use custody::protocol::postgres::scanner::{Inspect, Scanner};
use libfuzzer_sys::fuzz_target;

struct SeeAll;

impl Inspect for SeeAll {
    fn wants(&self, tag: u8) -> bool {
        matches!(tag, b'Q' | b'P' | b'B' | b'E' | b'C' | b'S' | b'X')
    }
    fn frame_seen(&mut self, tag: u8, body: &[u8]) -> Result<(), custody::protocol::postgres::PgError> {
        match tag {
            b'Q' | b'E' => codec::query_sql(body).map(|_| ()),
            b'P' => codec::parse_msg(body).map(|_| ()),
            b'B' => codec::bind_msg(body).map(|_| ()),
            b'C' => codec::close_msg(body).map(|_| ()),
            _ => Ok(()),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else { return };
    let mut startup = BytesMut::from(data);
    while let Ok(Some(_)) = codec::decode_startup(&mut startup) {}
    let _ = codec::error_fields(data);

    let mut scanner = Scanner::new(1 << 16);
    let mut out = BytesMut::new();
    let cut = (split as usize).min(data.len());
    let mut ok = scanner.feed(&data[..cut], &mut SeeAll, &mut out).is_ok();
    if ok {
        ok = scanner.feed(&data[cut..], &mut SeeAll, &mut out).is_ok();
    }
    if ok {
        // Nothing inspected is rewritten, so the output is the input, less
        // whatever frame is still incomplete.
        assert!(data.starts_with(&out));
        if scanner.at_boundary() {
            assert_eq!(&out[..], data);
        }
    }
});
