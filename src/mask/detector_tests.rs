//! Per-detector tests: true positives (alone and inside a sentence), near
//! misses that must stay untouched, and values of several types side by side.

use std::collections::BTreeMap;

use super::tests::{
    assert_clean, assert_masks, engine, mask, mask_with, Setup, DEFAULT, GCP_KEY, JWT,
};
#[test]
fn email() {
    assert_masks(
        "[EMAIL]",
        &[
            "john.doe+tag@example.co.uk",
            "a@b.io",
            "Ops_Team-1@mail.example.com",
        ],
    );
    // Inside a URL the email is still an email.
    assert_eq!(
        mask("https://x.test/unsub?u=jo@example.com&a=1"),
        "https://x.test/unsub?u=[EMAIL]&a=1"
    );
    assert_eq!(mask("mailto:jo@example.com."), "mailto:[EMAIL].");
    assert_clean(&[
        "user@localhost",
        "@handle",
        "a@b",
        "jo@example.c0m",
        "jo@-bad.com x",
        "email me @ home",
    ]);
}

#[test]
fn credit_card() {
    assert_masks(
        "[CREDIT_CARD]",
        &[
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "4111111111111111",
            "3782 822463 10005",
            "5555555555554444",
        ],
    );
    assert_eq!(mask("(4111111111111111)"), "([CREDIT_CARD])");
    assert_clean(&[
        "4111 1111 1111 1112",     // Luhn fails
        "1234567812345670",        // Luhn ok, no issuer starts with 1
        "41111111111111110000",    // inside a longer digit run
        "order_4111111111111111",  // inside an identifier
        "4111 1111-1111 1111",     // mixed separators
        "41 11 11 11 11 11 11 11", // not card grouping
        "20240315102345123",       // timestamp
        "id: 4111111111111111-v2", // glued to a word
    ]);
}

#[test]
fn us_ssn() {
    assert_masks("[US_SSN]", &["078-05-1120", "219 09 9999", "536.22.4312"]);
    assert_clean(&[
        "000-12-3456",
        "666-12-3456",
        "912-34-5678",
        "123-00-4567",
        "123-45-0000",
        "123456789",   // bare digits are too common to call an SSN
        "123-45 6789", // mixed separators
        "1123-45-6789",
        "123-45-6789-1", // part of a longer id
        "A123-45-6789",
    ]);
}

#[test]
fn iban() {
    assert_masks(
        "[IBAN]",
        &[
            "DE89 3704 0044 0532 0130 00",
            "DE89370400440532013000",
            "GB82 WEST 1234 5698 7654 32",
            "FR14 2004 1010 0505 0001 3M02 606",
            "NL91ABNA0417164300",
        ],
    );
    assert_eq!(
        mask("IBAN DE89 3704 0044 0532 0130 00 EUR"),
        "IBAN [IBAN] EUR"
    );
    assert_clean(&[
        "DE89 3704 0044 0532 0130 01", // mod-97 fails
        "XX89370400440532013000",      // unknown country
        "DE8937040044053201300",       // one short for DE
        "XDE89370400440532013000",     // inside a word
    ]);
}

#[test]
fn phone() {
    assert_masks(
        "[PHONE]",
        &[
            "(415) 555-0123",
            "415-555-0123",
            "415.555.0123",
            "415 555 0123",
            "+44 20 7946 0958",
            "+14155550123",
            "+1 (415) 555-0123",
            "+1-415-555-0123",
            "1-800-555-0199",
            "+49 (0)30 901820",
        ],
    );
    assert_clean(&[
        "BUILD-555-1234",
        "BUILD-415-555-0123",
        "1.2.3-4567",
        "v10.0.19045.2965",
        "2024-03-15",
        "2024-03-15 10:23:45",
        "2024-03-15T10:23:45.123Z",
        "4155550123", // a plain long number
        "id4155550123",
        "order-4155550123",
        "call 555-0123", // local number, no area code
        "+123 45",       // too few digits
        "015-555-0123",  // area codes start with 2-9
        "415-155-0123",  // so do exchanges
        "+1234567890123456",
    ]);
}

#[test]
fn ip_address() {
    assert_masks(
        "[IP_ADDRESS]",
        &[
            "10.0.0.1",
            "192.168.1.254",
            "2001:db8::1",
            "::1",
            "fe80::1ff:fe23:4567:890a",
            "::ffff:10.0.0.1",
        ],
    );
    assert_eq!(mask("host=10.1.2.3:5432"), "host=[IP_ADDRESS]:5432");
    assert_eq!(
        mask("[2001:db8::1]:443 and 2001:db8::2."),
        "[[IP_ADDRESS]]:443 and [IP_ADDRESS]."
    );
    assert_eq!(mask("from fe80::1: refused"), "from [IP_ADDRESS]: refused");
    assert_clean(&[
        "1.2.3.4.5",
        "v10.0.19045.2965",
        "10.0.19045.2965",
        "256.1.1.1",
        "01.02.03.04",
        "10:23:45",
        "at 10:23:45.123",
        "00:1a:2b:3c:4d:5e",
        "std::vector<int>",
        "Foo::bar add:: ::",
        "key: value",
        "1.2.3-4567",
    ]);
}

#[test]
fn gcp_api_key() {
    assert_eq!(GCP_KEY.len(), 39);
    assert_masks("[GCP_API_KEY]", &[GCP_KEY]);
    assert_eq!(mask(&format!("key={GCP_KEY}&x=1")), "key=[GCP_API_KEY]&x=1");
    assert_clean(&[
        &GCP_KEY[..38],
        &format!("{GCP_KEY}x"),
        &format!("x{GCP_KEY}"),
        "AIza is a prefix",
    ]);
}

#[test]
fn aws_access_key() {
    assert_masks(
        "[AWS_ACCESS_KEY]",
        &["AKIAIOSFODNN7EXAMPLE", "ASIAY34FZKBOKMUTVV7A"],
    );
    assert_clean(&[
        "AKIAIOSFODNN7EXAMPL",
        "AKIAIOSFODNN7EXAMPLEX",
        "XAKIAIOSFODNN7EXAMPLE",
        "AKIAiosfodnn7example",
    ]);
}

#[test]
fn private_key() {
    let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo\n4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0\n-----END RSA PRIVATE KEY-----";
    assert_masks(
        "[PRIVATE_KEY]",
        &[
            pem,
            &pem.replace("RSA ", ""),
            &pem.replace("RSA", "ENCRYPTED"),
        ],
    );
    // A GCP service-account file holds the key with escaped newlines; a body
    // line shaped like an API key is still part of the key block.
    let body = GCP_KEY.replace('-', "0");
    let json = format!(
        r#"{{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n{body}\n-----END PRIVATE KEY-----\n", "client_email": "svc@proj.iam.gserviceaccount.com"}}"#
    );
    let (out, counts) = mask_with(&engine(DEFAULT), &json);
    assert_eq!(
        out,
        r#"{"type": "service_account", "private_key": "[PRIVATE_KEY]\n", "client_email": "[EMAIL]"}"#
    );
    assert_eq!(
        counts.0,
        BTreeMap::from([("email".into(), 1), ("private_key".into(), 1)])
    );
    // Truncated: no END line, still hidden.
    assert_eq!(
        mask("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg"),
        "[PRIVATE_KEY]"
    );
    assert_clean(&[
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
        "-----BEGIN PUBLIC KEY-----",
    ]);
}

#[test]
fn jwt() {
    assert_masks("[JWT]", &[JWT, "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0."]);
    assert_eq!(
        mask(&format!("Authorization: Bearer {JWT}")),
        "Authorization: Bearer [JWT]"
    );
    assert_clean(&[
        "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiIxIn0.c2ln", // header has no alg
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.",   // no payload
        "xeyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.",   // inside a token
        "3f2a9c1d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39", // git SHA
        "550e8400-e29b-41d4-a716-446655440000",    // UUID
        "12345678-1234-1234-1234-123456789012",
    ]);
}

#[test]
fn near_misses_in_realistic_text() {
    assert_clean(&[
        "2024-03-15T10:23:45.123Z INFO build BUILD-555-1234 version 1.2.3-4567 on v10.0.19045.2965",
        "commit 3f2a9c1d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39 request 550e8400-e29b-41d4-a716-446655440000",
        "Order #10234 shipped 2024-03-15 to 742 Evergreen Terrace, Springfield, OR 97403; total $1,234.56",
        "Stainless steel bottle, 750 ml, 24h cold, SKU AB-12345-XL, 4.7 stars (1,024 reviews)",
        "latency p99=123.45ms p50=12.3ms pid 48213 port 5432 took 1710498225123 ns",
    ]);
}

#[test]
fn mixed_types_in_one_value() {
    let text = "Jane <jane@corp.com>, card 4111-1111-1111-1111, ssn 078-05-1120, tel (415) 555-0123, from 10.1.2.3, \
                iban DE89370400440532013000, key AKIAIOSFODNN7EXAMPLE";
    let (out, counts) = mask_with(&engine(DEFAULT), text);
    assert_eq!(
        out,
        "Jane <[EMAIL]>, card [CREDIT_CARD], ssn [US_SSN], tel [PHONE], from [IP_ADDRESS], \
         iban [IBAN], key [AWS_ACCESS_KEY]"
    );
    assert_eq!(counts.0.values().sum::<u64>(), 7);
    assert_eq!(counts.0.get("credit_card"), Some(&1));
}

#[test]
fn values_split_across_types() {
    // Adjacent values of different types in one digit run.
    assert_eq!(
        mask("4111111111111111 078-05-1120"),
        "[CREDIT_CARD] [US_SSN]"
    );
    assert_eq!(mask("2024-03-15 415-555-0123"), "2024-03-15 [PHONE]");
    assert_eq!(mask("10.0.0.1 415-555-0123"), "[IP_ADDRESS] [PHONE]");
    // Overlaps keep the longer value: the IPv6 around an IPv4, the IBAN around card-like digits.
    assert_eq!(mask("::ffff:10.0.0.1"), "[IP_ADDRESS]");
    assert_eq!(mask("GB82 WEST 1234 5698 7654 32"), "[IBAN]");
    // A phone-shaped local part is part of the email.
    assert_eq!(mask("4155550123@txt.example.net"), "[EMAIL]");
    // Only enabled detectors run.
    let email_only = engine(Setup {
        detectors: &["email"],
        ..DEFAULT
    });
    assert_eq!(
        mask_with(&email_only, "jo@x.io 4111111111111111").0,
        "[EMAIL] 4111111111111111"
    );
}

#[test]
fn private_key_markers_never_swallow_text_between_them() {
    // The attack: two markers around SQL hid the SQL from the approver.
    let sql = "delete from orders where note = '-----BEGIN PRIVATE KEY-----' or id > 0 or note = '-----END PRIVATE KEY-----'";
    let out = mask(sql);
    assert!(out.contains("or id > 0 or note"), "{out}");
    let multi = "-----BEGIN PRIVATE KEY-----\ndelete\nfrom\norders\n-----END PRIVATE KEY-----";
    assert!(mask(multi).contains("from\norders"), "{}", mask(multi));
}
