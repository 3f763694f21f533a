//! Active Directory's own rules (pure): userAccountControl bits, accountExpires, sAMAccountName,
//! objectGUID text, and the meaning of AD's error diagnostics.

use crate::config::LifecycleConfig;
use crate::mapping::Desired;
use crate::model::DirSnapshot;

/// userAccountControl bits dirbridge touches.
pub const ACCOUNTDISABLE: u32 = 0x2;
pub const NORMAL_ACCOUNT: u32 = 0x200;
/// accountExpires values that mean "never".
pub const NEVER: &[&str] = &["0", "9223372036854775807"];
/// 100-ns intervals between 1601-01-01 and 1970-01-01.
const EPOCH_DIFF_SECS: i64 = 11_644_473_600;

/// The userAccountControl a person should have: every bit already set is kept; only
/// ACCOUNTDISABLE follows the lifecycle. A new account is a normal account (512, or 514).
pub fn uac(current: Option<u32>, disabled: bool) -> u32 {
    let base = current.unwrap_or(NORMAL_ACCOUNT);
    if disabled {
        base | ACCOUNTDISABLE
    } else {
        base & !ACCOUNTDISABLE
    }
}

/// AD's accountExpires for an HR end date (the last working day): the account expires at the
/// start of the next day, in the lifecycle's time zone.
pub fn account_expires(end: jiff::civil::Date, tz: &jiff::tz::TimeZone) -> Option<String> {
    let next = end.tomorrow().ok()?;
    let ts = next.to_zoned(tz.clone()).ok()?.timestamp();
    let v = (ts.as_second() + EPOCH_DIFF_SECS) as i128 * 10_000_000;
    Some(v.to_string())
}

/// Characters AD refuses in sAMAccountName.
const SAM_FORBIDDEN: &[char] = &[
    '"', '/', '\\', '[', ']', ':', ';', '|', '=', ',', '+', '*', '?', '<', '>', '@',
];
pub const SAM_MAX: usize = 20;

/// Make a rendered sAMAccountName acceptable: forbidden characters dropped, at most 20
/// characters with the uniqueness suffix `n` kept at the end.
pub fn fit_sam(rendered: &str, n: &str) -> String {
    let clean: String = rendered
        .chars()
        .filter(|c| !SAM_FORBIDDEN.contains(c) && !c.is_control())
        .collect();
    let clean = clean.trim_end_matches('.').trim().to_string();
    if clean.chars().count() <= SAM_MAX {
        return clean;
    }
    let base = clean.strip_suffix(n).unwrap_or(&clean);
    let keep = SAM_MAX.saturating_sub(n.chars().count());
    let mut out: String = base.chars().take(keep).collect();
    out.push_str(n);
    out
}

/// objectGUID (16 bytes, little-endian first three fields) as AD writes it:
/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn guid_text(b: &[u8]) -> Option<String> {
    if b.len() != 16 {
        return None;
    }
    Some(format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    ))
}

/// Set what the AD account needs on every desired entry: userAccountControl from the lifecycle
/// (other bits kept) and accountExpires from the end date. Both are owned by dirbridge
/// (`lifecycle_attrs`), so the planner writes only a difference.
pub fn accounts(desired: &mut [Desired], dir: &DirSnapshot, lifecycle: Option<&LifecycleConfig>) {
    let by_uuid: std::collections::HashMap<&str, &crate::model::Entry> =
        dir.entries.iter().map(|e| (e.uuid.as_str(), e)).collect();
    let tz = lifecycle
        .and_then(|l| l.timezone.as_deref())
        .and_then(|t| jiff::tz::TimeZone::get(t).ok())
        .unwrap_or_else(jiff::tz::TimeZone::system);
    for d in desired.iter_mut() {
        let entry = d.uuid.as_deref().and_then(|u| by_uuid.get(u));
        // A self-manager (the top of the tree) is left out: AD's manager is a link to another.
        let own = crate::dn::normalize(&d.dn);
        if let Some(m) = d.attrs.get_mut("manager") {
            m.retain(|v| crate::dn::normalize(v) != own);
            if m.is_empty() {
                d.attrs.remove("manager");
            }
        }
        let current = entry
            .and_then(|e| e.get("userAccountControl").first().cloned())
            .and_then(|v| v.trim().parse::<u32>().ok());
        let disabled = match (&d.state, lifecycle) {
            (Some(s), Some(lc)) => s.disabled(lc),
            _ => false,
        };
        d.attrs.remove("userAccountControl");
        d.lifecycle_attrs.insert(
            "userAccountControl",
            uac(current, disabled).to_string().into(),
        );
        let Some(lc) = lifecycle else { continue };
        let Some(col) = lc.end_date.as_deref() else {
            continue;
        };
        let end = d
            .fields
            .get(col)
            .and_then(|v| crate::lifecycle::parse_date(v).ok().flatten());
        let cur_exp = entry.and_then(|e| e.get("accountExpires").first().cloned());
        let want = match end {
            Some(e) => account_expires(e, &tz),
            // "never": keep the server's own spelling of never.
            None => match &cur_exp {
                Some(c) if NEVER.contains(&c.as_str()) => Some(c.clone()),
                _ if d.fields.is_empty() => cur_exp.clone(),
                _ => Some("0".into()),
            },
        };
        if let Some(w) = want {
            d.attrs.remove("accountExpires");
            d.lifecycle_attrs.insert("accountExpires", w.into());
        }
    }
}

/// What an AD diagnostic means for a sysadmin, and what happens next. `text` is the server's
/// message (`0000XXXX: …`), `rc` the LDAP result code.
pub fn explain_error(rc: u32, text: &str) -> Option<&'static str> {
    let code = text.get(..8).unwrap_or("");
    Some(match (rc, code) {
        (_, "00002071") => "the sAMAccountName is already in use in the domain (taken after this run read the directory): the next run takes the next candidate",
        (_, "0000202F") if text.contains("userPrincipalName") => "the userPrincipalName is already in use in the forest: make the template unique (e.g. with {{ n }})",
        (_, "0000202F") => "AD refused a value (an invalid character in sAMAccountName?): check the template",
        (_, "0000052D") => "the domain's password policy refused the generated password (length, complexity or history): raise lifecycle.password-length",
        (_, "00002035") if text.contains("Old RDN") => "AD requires deleteoldrdn on renames",
        (_, "00002035") if text.contains("NT hash") => "unicodePwd must be the quoted UTF-16LE password",
        (_, "00002035") if text.contains("linked attribute") => "memberOf is computed by AD from the groups' member: change the group instead",
        (_, "0000200A") => "an attribute is not in AD's schema: check [users.attributes]",
        (_, "0000200B") => "AD refused the value's syntax or length (employeeID has at most 16 characters)",
        (_, "00000525") => "a member or manager DN does not exist in the domain",
        (_, "000020B5") => "a DN value (manager, member) names an entry that does not exist (yet): the next run sets it once it does",
        (_, "00002030") | (32, _) => "the entry or its parent OU does not exist (an OU to create? set create = true on the placement rule)",
        (8, _) => "the server requires a protected connection for this: use ldaps:// or starttls = true",
        (50, _) => "the bind account may not do this: give it the rights, or (for unicodePwd) make sure the connection is encrypted",
        (53, _) if text.contains("unicodePwd") => "passwords can only be set over ldaps:// or StartTLS",
        _ => return None,
    })
}

/// What a failed AD bind's `data X` says.
pub fn explain_bind(text: &str) -> Option<&'static str> {
    let data = text.split("data ").nth(1)?.get(..3)?;
    Some(match data {
        "52e" => "wrong password or unknown user (data 52e): check directory.bind-dn and the password file",
        "525" => "the user does not exist (data 525)",
        "530" => "logon not permitted at this time (data 530)",
        "531" => "logon not permitted from this workstation (data 531)",
        "532" => "the password has expired (data 532): set a new one for the service account",
        "533" => "the account is disabled (data 533)",
        "701" => "the account has expired (data 701): accountExpires is in the past",
        "773" => "the password must be changed at next logon (data 773): change it once, or clear pwdLastSet for the service account",
        "775" => "the account is locked out (data 775)",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uac_keeps_other_bits() {
        assert_eq!(uac(None, false), 512);
        assert_eq!(uac(None, true), 514);
        // DONT_EXPIRE_PASSWORD (0x10000) survives both ways
        assert_eq!(uac(Some(0x10200), true), 0x10202);
        assert_eq!(uac(Some(0x10202), false), 0x10200);
    }

    #[test]
    fn account_expires_is_the_next_midnight_in_1601_intervals() {
        let tz = jiff::tz::TimeZone::UTC;
        // 2026-03-31 ends at 2026-04-01T00:00Z = 1775001600 s since 1970
        let v = account_expires("2026-03-31".parse().unwrap(), &tz).unwrap();
        assert_eq!(
            v,
            ((1_775_001_600i64 + EPOCH_DIFF_SECS) as i128 * 10_000_000).to_string()
        );
        assert_eq!(v, "134194752000000000");
    }

    #[test]
    fn sam_account_names_fit() {
        assert_eq!(fit_sam("j.doe", ""), "j.doe");
        assert_eq!(
            fit_sam("a/b[c]:d;e|f=g,h+i*j?k<l>m\"n@o", ""),
            "abcdefghijklmno"
        );
        assert_eq!(
            fit_sam("maximiliankowalczykowski", ""),
            "maximiliankowalczyko"
        );
        assert_eq!(
            fit_sam("maximiliankowalczykowski2", "2"),
            "maximiliankowalczyk2"
        );
        assert_eq!(
            fit_sam("maximiliankowalczykowski12", "12").chars().count(),
            20
        );
        assert!(fit_sam("maximiliankowalczykowski12", "12").ends_with("12"));
    }

    #[test]
    fn guids_print_as_ad_does() {
        let b = [
            0x2a, 0x36, 0x5b, 0x8c, 0x1d, 0x4e, 0x7f, 0x40, 0x91, 0xa2, 0xb3, 0xc4, 0xd5, 0xe6,
            0xf7, 0x08,
        ];
        assert_eq!(
            guid_text(&b).unwrap(),
            "8c5b362a-4e1d-407f-91a2-b3c4d5e6f708"
        );
        assert_eq!(guid_text(&b[..3]), None);
    }

    #[test]
    fn errors_are_explained() {
        assert!(explain_error(
            68,
            "00002071: samldb: samAccountName 'jdoe' already in use!"
        )
        .unwrap()
        .contains("next candidate"));
        assert!(explain_error(19, "0000052D: Constraint violation - check_password_restrictions: the password is too short.").unwrap().contains("password-length"));
        assert!(
            explain_error(8, "BindSimple: Transport encryption required.")
                .unwrap()
                .contains("ldaps://")
        );
        assert!(explain_bind("80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data 533, v1db1").unwrap().contains("disabled"));
        assert!(explain_bind("80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data 52e, v1db1").unwrap().contains("wrong password"));
    }
}
