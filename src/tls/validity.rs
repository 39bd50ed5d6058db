//! The validity period of an X.509 certificate (RFC 5280 §4.1.2.5), read from its DER by walking
//! the TBSCertificate's first fields. rustls-webpki checks validity while it verifies a chain but
//! does not expose it, and a serving certificate is checked before any chain is verified; one
//! field is not worth an X.509 parser crate (`x509-parser` brings nom, asn1-rs and time).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// One DER TLV at the start of `b`: (tag, contents, what follows).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, b) = b.split_first()?;
    let (len, b) = if first < 0x80 {
        (usize::from(first), b)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n]
            .iter()
            .fold(0usize, |a, &x| (a << 8) | usize::from(x));
        (len, &b[n..])
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
/// signature, issuer, validity SEQUENCE { notBefore Time, notAfter Time }, … }, … }`.
pub fn validity(der: &[u8]) -> Option<Validity> {
    const SEQ: u8 = 0x30;
    let (SEQ, cert, _) = tlv(der)? else {
        return None;
    };
    let (SEQ, tbs, _) = tlv(cert)? else {
        return None;
    };
    let (tag, _, after_version) = tlv(tbs)?;
    let rest = if tag == 0xa0 { after_version } else { tbs };
    let (0x02, _, rest) = tlv(rest)? else {
        return None;
    };
    let (SEQ, _, rest) = tlv(rest)? else {
        return None;
    };
    let (SEQ, _, rest) = tlv(rest)? else {
        return None;
    };
    let (SEQ, v, _) = tlv(rest)? else {
        return None;
    };
    let (t1, not_before, v) = tlv(v)?;
    let (t2, not_after, _) = tlv(v)?;
    Some(Validity {
        not_before: time(t1, not_before)?,
        not_after: time(t2, not_after)?,
    })
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`), the two
/// forms RFC 5280 allows.
fn time(tag: u8, v: &[u8]) -> Option<SystemTime> {
    let digits = v.strip_suffix(b"Z")?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| {
        digits[r]
            .iter()
            .fold(0i64, |a, &d| a * 10 + i64::from(d - b'0'))
    };
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy = num(0..2);
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (0x18, 14) => (num(0..4), 4),
        _ => return None,
    };
    let pair = |i: usize| num(rest + 2 * i..rest + 2 * i + 2);
    let (month, day, hour, min, sec) = (pair(0), pair(1), pair(2), pair(3), pair(4));
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec;
    let since = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH.checked_add(since)
    } else {
        UNIX_EPOCH.checked_sub(since)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        if body.len() < 0x80 {
            v.push(body.len() as u8);
        } else {
            v.extend([0x82, (body.len() >> 8) as u8, body.len() as u8]);
        }
        v.extend_from_slice(body);
        v
    }

    /// A certificate skeleton: the fields before validity, then `validity`, then padding that
    /// makes the TBS longer than 127 bytes (long-form lengths).
    fn cert(version: bool, validity: &[u8]) -> Vec<u8> {
        let mut tbs = Vec::new();
        if version {
            tbs.extend(der(0xa0, &der(0x02, &[2])));
        }
        tbs.extend(der(0x02, &[0x10, 0x01]));
        tbs.extend(der(0x30, &[]));
        tbs.extend(der(0x30, &[]));
        tbs.extend(der(0x30, validity));
        tbs.extend(der(0x30, &[0u8; 200]));
        der(0x30, &[der(0x30, &tbs), der(0x30, &[])].concat())
    }

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn utc_and_generalized_times() {
        let v = [der(0x17, b"240229120000Z"), der(0x18, b"20991231235959Z")].concat();
        let got = validity(&cert(true, &v)).unwrap();
        assert_eq!(got.not_before, at("2024-02-29T12:00:00Z"));
        assert_eq!(got.not_after, at("2099-12-31T23:59:59Z"));
        // No version field (v1), and a UTCTime year >= 50 is 19xx.
        let v = [der(0x17, b"991231000000Z"), der(0x17, b"490101000000Z")].concat();
        let got = validity(&cert(false, &v)).unwrap();
        assert_eq!(got.not_before, at("1999-12-31T00:00:00Z"));
        assert_eq!(got.not_after, at("2049-01-01T00:00:00Z"));
        let v = [der(0x17, b"691231235959Z"), der(0x18, b"19700101000000Z")].concat();
        let got = validity(&cert(true, &v)).unwrap();
        assert_eq!(got.not_before, UNIX_EPOCH - Duration::from_secs(1));
        assert_eq!(got.not_after, UNIX_EPOCH);
    }

    #[test]
    fn malformed_is_none() {
        for bad in [
            &b"240229120000"[..], // no Z
            b"2402291200Z",       // too short
            b"24022912000aZ",     // not a digit
            b"241329120000Z",     // month 13
            b"240200120000Z",     // day 0
        ] {
            let v = [der(0x17, bad), der(0x17, b"250101000000Z")].concat();
            assert_eq!(validity(&cert(true, &v)), None, "{bad:?}");
        }
        // A GeneralizedTime with a UTCTime's length, a wrong tag.
        let v = [der(0x18, b"240229120000Z"), der(0x17, b"250101000000Z")].concat();
        assert_eq!(validity(&cert(true, &v)), None);
        let v = [der(0x04, b"240229120000Z"), der(0x17, b"250101000000Z")].concat();
        assert_eq!(validity(&cert(true, &v)), None);
        // Truncated input and garbage never panic.
        let good = cert(
            true,
            &[der(0x17, b"240229120000Z"), der(0x17, b"250101000000Z")].concat(),
        );
        for n in 0..good.len() {
            assert_eq!(validity(&good[..n]), None, "{n}");
        }
        assert_eq!(validity(b"-----BEGIN CERTIFICATE-----"), None);
    }
}
