//! Tests of the SFTP tap: every split point, large writes, garbage, the extensions that change files.
#![allow(clippy::indexing_slicing, clippy::unwrap_used)]

use super::*;

fn pkt(ty: u8, parts: &[&[u8]]) -> Vec<u8> {
    let body = parts.concat();
    [&(body.len() as u32 + 1).to_be_bytes()[..], &[ty], &body].concat()
}
fn s(x: &[u8]) -> Vec<u8> {
    [&(x.len() as u32).to_be_bytes()[..], x].concat()
}
fn n(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}
fn open(id: u32, path: &str, pflags: u32) -> Vec<u8> {
    pkt(OPEN, &[&n(id), &s(path.as_bytes()), &n(pflags), &n(0)])
}
fn handle(id: u32, h: &[u8]) -> Vec<u8> {
    pkt(HANDLE, &[&n(id), &s(h)])
}
fn write(id: u32, h: &[u8], len: usize) -> Vec<u8> {
    pkt(WRITE, &[&n(id), &s(h), &[0; 8], &s(&vec![7; len])])
}
fn read(id: u32, h: &[u8], len: u32) -> Vec<u8> {
    pkt(READ, &[&n(id), &s(h), &[0; 8], &n(len)])
}
fn data(id: u32, len: usize) -> Vec<u8> {
    pkt(DATA, &[&n(id), &s(&vec![9; len])])
}
fn status(id: u32, code: u32) -> Vec<u8> {
    pkt(STATUS, &[&n(id), &n(code), &s(b"msg"), &s(b"")])
}
fn close(id: u32, h: &[u8]) -> Vec<u8> {
    pkt(CLOSE, &[&n(id), &s(h)])
}
fn req(ty: u8, id: u32, strs: &[&str]) -> Vec<u8> {
    let strs: Vec<Vec<u8>> = strs.iter().map(|p| s(p.as_bytes())).collect();
    pkt(ty, &[&n(id), &strs.concat()])
}
fn file(path: &str, write: bool, read: bool, bytes_written: u64, bytes_read: u64) -> FileOp {
    let path = path.into();
    FileOp::File {
        path,
        write,
        read,
        bytes_written,
        bytes_read,
    }
}

const WCT: u32 = 0x2 | 0x8 | 0x10;

/// (from client?, bytes) in the order they cross the gateway.
fn conversation() -> Vec<(bool, Vec<u8>)> {
    vec![
        (true, pkt(1, &[&n(3)])),
        (
            false,
            pkt(2, &[&n(3), &s(b"posix-rename@openssh.com"), &s(b"1")]),
        ),
        (true, open(1, "/up", WCT)),
        (false, handle(1, b"h1")),
        (
            true,
            [write(2, b"h1", 100), write(3, b"h1", 50), close(4, b"h1")].concat(),
        ),
        (false, [status(2, 0), status(3, 0), status(4, 0)].concat()),
        (true, open(5, "/down", FXF_READ)),
        (false, handle(5, b"h2")),
        (true, [read(6, b"h2", 64), read(7, b"h2", 64)].concat()),
        (false, [data(6, 64), status(7, 1)].concat()),
        (
            true,
            [
                close(8, b"h2"),
                req(REMOVE, 9, &["/rm"]),
                req(RENAME, 10, &["/a", "/b"]),
                req(SYMLINK, 11, &["/target", "/link"]),
                req(EXTENDED, 12, &["posix-rename@openssh.com", "/c", "/d"]),
                req(MKDIR, 13, &["/dir"]),
                req(RMDIR, 14, &["/old"]),
                req(SETSTAT, 15, &["/chmod"]),
            ]
            .concat(),
        ),
    ]
}

fn expected() -> Vec<FileOp> {
    vec![
        file("/up", true, false, 150, 0),
        file("/down", false, true, 0, 64),
        FileOp::Remove { path: "/rm".into() },
        FileOp::Rename {
            from: "/a".into(),
            to: "/b".into(),
        },
        FileOp::Symlink {
            link: "/link".into(),
            target: "/target".into(),
        },
        FileOp::Rename {
            from: "/c".into(),
            to: "/d".into(),
        },
        FileOp::Mkdir {
            path: "/dir".into(),
        },
        FileOp::Rmdir {
            path: "/old".into(),
        },
        FileOp::Setstat {
            path: "/chmod".into(),
        },
    ]
}

/// Feeds every step cut into pieces by `cut`.
fn run(cut: impl Fn(&[u8]) -> Vec<&[u8]>) -> Vec<FileOp> {
    let mut tap = SftpTap::new();
    let mut ops = Vec::new();
    for (client, bytes) in conversation() {
        for piece in cut(&bytes) {
            ops.extend(if client {
                tap.client(piece)
            } else {
                tap.server(piece)
            });
        }
    }
    ops.extend(tap.finish());
    ops
}

#[test]
fn upload_download_and_path_ops() {
    assert_eq!(run(|b| vec![b]), expected());
}

#[test]
fn every_split_point_gives_the_same_ops() {
    assert_eq!(run(|b| b.chunks(1).collect()), expected());
    let longest = conversation().iter().map(|(_, b)| b.len()).max().unwrap();
    for k in 0..=longest {
        let ops = run(|b| {
            let (x, y) = b.split_at(k.min(b.len()));
            vec![x, y]
        });
        assert_eq!(ops, expected(), "split at {k}");
    }
}

#[test]
fn fsetstat_extensions_and_server_side_copy_are_recorded() {
    let mut tap = SftpTap::new();
    let mut ops = Vec::new();
    let attrs = |id: u32, size: u64| pkt(ATTRS, &[&n(id), &n(ATTR_SIZE), &size.to_be_bytes()]);
    let copy = |id: u32, len: u64| {
        pkt(
            EXTENDED,
            &[
                &n(id),
                &s(b"copy-data"),
                &s(b"src"),
                &0u64.to_be_bytes(),
                &len.to_be_bytes(),
                &s(b"dst"),
                &0u64.to_be_bytes(),
            ],
        )
    };
    for (client, bytes) in [
        (true, open(1, "/up", WCT)),
        (false, handle(1, b"up")),
        (true, pkt(FSETSTAT, &[&n(2), &s(b"up"), &n(0)])),
        (
            true,
            req(EXTENDED, 3, &["hardlink@openssh.com", "/old", "/new"]),
        ),
        (
            true,
            pkt(
                EXTENDED,
                &[&n(4), &s(b"lsetstat@openssh.com"), &s(b"/l"), &n(0)],
            ),
        ),
        (true, req(STAT, 5, &["/src"])),
        (false, attrs(5, 1234)),
        (true, open(6, "/src", FXF_READ)),
        (false, handle(6, b"src")),
        (true, open(7, "/dst", WCT)),
        (false, handle(7, b"dst")),
        (true, copy(8, 0)),
        (true, copy(9, 100)),
        (true, close(10, b"dst")),
    ] {
        ops.extend(if client {
            tap.client(&bytes)
        } else {
            tap.server(&bytes)
        });
    }
    assert_eq!(
        ops,
        vec![
            FileOp::Setstat { path: "/up".into() },
            FileOp::Hardlink {
                link: "/new".into(),
                target: "/old".into()
            },
            FileOp::Setstat { path: "/l".into() },
            FileOp::Copy {
                from: "/src".into(),
                to: "/dst".into(),
                bytes: Some(1234)
            },
            FileOp::Copy {
                from: "/src".into(),
                to: "/dst".into(),
                bytes: Some(100)
            },
            file("/dst", true, false, 1334, 0),
        ]
    );
    // A copy "to end of file" of a file never STATed: the count is unknown.
    let mut tap = SftpTap::new();
    tap.client(&open(1, "/a", FXF_READ));
    tap.server(&handle(1, b"src"));
    assert_eq!(
        tap.client(&copy(2, 0)),
        vec![FileOp::Copy {
            from: "/a".into(),
            to: "(an untracked handle)".into(),
            bytes: None
        }]
    );
}

#[test]
fn big_write_is_counted_not_buffered_and_finish_reports_it() {
    let mut tap = SftpTap::new();
    assert!(tap.client(&open(1, "/big", WCT)).is_empty());
    assert!(tap.server(&handle(1, b"h")).is_empty());
    let big = write(2, b"h", 10 << 20);
    for chunk in big.chunks(32 << 10) {
        assert!(tap.client(chunk).is_empty());
        assert!(tap.buffered() < 4096, "buffered {}", tap.buffered());
    }
    // Never closed: finish() still reports it, once.
    assert_eq!(tap.finish(), vec![file("/big", true, false, 10 << 20, 0)]);
    assert!(tap.finish().is_empty());
}

#[test]
fn failed_open_and_directories_yield_nothing() {
    let mut tap = SftpTap::new();
    assert!(tap.client(&open(1, "/nope", FXF_READ)).is_empty());
    assert!(tap.server(&status(1, 2)).is_empty());
    assert!(tap.server(&handle(1, b"late")).is_empty());
    assert!(tap.client(&close(2, b"late")).is_empty());
    assert!(tap.client(&req(11, 3, &["/dir"])).is_empty());
    assert!(tap.server(&handle(3, b"d")).is_empty());
    assert!(tap.client(&close(4, b"d")).is_empty());
    assert!(tap.finish().is_empty());
}

#[test]
fn large_uninteresting_packets_are_skipped() {
    let mut tap = SftpTap::new();
    assert!(tap.server(&pkt(104, &[&vec![0; 200_000]])).is_empty());
    assert!(tap.buffered() < 4096);
    assert_eq!(
        tap.client(&req(REMOVE, 1, &["/r"])),
        vec![FileOp::Remove { path: "/r".into() }]
    );
}

#[test]
fn tracking_is_bounded() {
    let mut tap = SftpTap::new();
    let mut named = Vec::new();
    for id in 0..5000 {
        named.extend(tap.client(&open(id, "/f", FXF_READ)));
    }
    assert_eq!(tap.pending.len(), MAX_PENDING);
    // The oldest unanswered OPENs were dropped, but each was still named.
    assert_eq!(named.len(), 5000 - MAX_PENDING);
    assert_eq!(named[0], file("/f", false, true, 0, 0));
    // Their answers resolve nothing.
    assert!(tap.server(&handle(0, b"old")).is_empty());
    assert!(tap.handles.is_empty());
    let mut untracked = Vec::new();
    for id in 3000..5000 {
        untracked.extend(tap.server(&handle(id, &n(id))));
    }
    assert_eq!(tap.handles.len(), MAX_HANDLES);
    // Files opened past the handle limit are named at once (counts unknown).
    assert_eq!(untracked.len(), 2000 - MAX_HANDLES);
}

#[test]
fn long_paths_are_capped() {
    let mut tap = SftpTap::new();
    let ops = tap.client(&req(REMOVE, 1, &[&"é".repeat(5000)]));
    let [FileOp::Remove { path }] = &ops[..] else {
        panic!("{ops:?}")
    };
    assert_eq!(path.len(), 4096);
    let ops = tap.client(&pkt(REMOVE, &[&n(2), &s(&[0xff; 5000])]));
    let [FileOp::Remove { path }] = &ops[..] else {
        panic!("{ops:?}")
    };
    assert!(path.len() <= 4096 && path.starts_with('\u{fffd}'));
}

#[test]
fn garbage_yields_one_unparsable_then_nothing() {
    for client in [true, false] {
        let big = if client { OPEN } else { STATUS };
        let cases = [
            vec![0, 0, 0, 0, 3],
            [&n(1 << 31)[..], &[WRITE]].concat(),
            vec![0, 2, 0, 0, big],
        ];
        for garbage in cases {
            let mut tap = SftpTap::new();
            let ops = if client {
                tap.client(&garbage)
            } else {
                tap.server(&garbage)
            };
            assert!(matches!(&ops[..], [FileOp::Unparsable { .. }]), "{ops:?}");
            assert!(tap.client(&req(REMOVE, 1, &["/x"])).is_empty());
            assert!(tap.server(&status(1, 0)).is_empty());
            assert!(tap.finish().is_empty());
        }
    }
}

#[test]
fn pseudo_random_input_never_panics() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let types = [
        1, 2, 3, 4, 5, 6, 9, 11, 13, 14, 15, 18, 20, 101, 102, 103, 104, 200,
    ];
    for round in 0..3000 {
        let mut tap = SftpTap::new();
        let mut unparsable = 0;
        for _ in 0..20 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                (0..next() % 64).map(|_| next() as u8).collect()
            } else {
                // Well-framed packets with small fields, to reach the parsers.
                let ty = types[(next() % types.len() as u64) as usize];
                let fields: Vec<Vec<u8>> = (0..next() % 6)
                    .map(|_| match next() % 3 {
                        0 => n((next() % 8) as u32).to_vec(),
                        1 => s(b"h"),
                        _ => vec![next() as u8],
                    })
                    .collect();
                pkt(ty, &[&fields.concat()])
            };
            let ops = if next() % 2 == 0 {
                tap.client(&bytes)
            } else {
                tap.server(&bytes)
            };
            unparsable += ops
                .iter()
                .filter(|o| matches!(o, FileOp::Unparsable { .. }))
                .count();
        }
        tap.finish();
        assert!(unparsable <= 1);
    }
}
