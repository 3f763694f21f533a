#!/usr/bin/python3
"""The baseline a sysadmin writes by hand: one search and one add or modify per row.

    /usr/bin/python3 bench/per-row.py URI BIND_DN PASSWORD PEOPLE_BASE EXPORT.csv

Same mapping as bench/run's dirbridge configuration (uid numbered for homonyms, cn, sn,
givenName, title, departmentNumber, manager, employeeNumber as the anchor), over one connection
with python-ldap (libldap, Debian's python3-ldap). People no longer in the export are deleted at
the end. No renames: a surname change keeps the old uid (a hand-written script rarely renames).
"""
import csv
import sys
import unicodedata

import ldap
import ldap.dn
import ldap.filter
import ldap.modlist

uri, bind_dn, password, base, export = sys.argv[1:6]
conn = ldap.initialize(uri)
conn.protocol_version = 3
conn.simple_bind_s(bind_dn, password)


def ascii_lower(s):
    return unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode().lower().replace(" ", "")


def esc(v):
    return ldap.filter.escape_filter_chars(v)

rows = list(csv.DictReader(open(export, encoding="utf-8")))
dn_of = {}  # employee id -> DN, filled as rows are handled (managers come first in the export)
keys = set()
# the uids in use, read once (a search per candidate uid is what makes naive scripts crawl)
taken = set()
for _, a in conn.search_ext_s(base, ldap.SCOPE_ONELEVEL, "(uid=*)", ["uid"]):
    taken.update(v.decode().lower() for v in a.get("uid", []))
for r in rows:
    key = r["employee_id"]
    keys.add(key)
    found = conn.search_s(base, ldap.SCOPE_ONELEVEL, f"(employeeNumber={esc(key)})",
                          ["uid", "cn", "sn", "givenName", "title", "departmentNumber", "manager"])
    want = {
        "cn": f"{r['preferred_name'] or r['given_name']} {r['surname']}",
        "sn": r["surname"],
        "givenName": r["given_name"],
        "title": r["title"],
        "departmentNumber": r["department"],
    }
    mgr = dn_of.get(r["manager_id"])
    if r["manager_id"] and mgr is None:
        m = conn.search_s(base, ldap.SCOPE_ONELEVEL, f"(employeeNumber={esc(r['manager_id'])})", ["1.1"])
        mgr = m[0][0] if m else None
    if mgr:
        want["manager"] = mgr
    want = {a: [v.encode()] for a, v in want.items() if v}
    if found:
        dn, have = found[0]
        mods = []
        for a in ("cn", "sn", "givenName", "title", "departmentNumber", "manager"):
            if have.get(a, []) != want.get(a, []):
                mods.append((ldap.MOD_REPLACE, a, want.get(a)) if want.get(a) else (ldap.MOD_DELETE, a, None))
        if mods:
            conn.modify_s(dn, mods)
        dn_of[key] = dn
        continue
    stem = ascii_lower(r["given_name"][:1] + r["surname"]) or "user"
    n = 1
    while (stem if n == 1 else f"{stem}{n}") in taken:
        n += 1
    uid = stem if n == 1 else f"{stem}{n}"
    dn = f"uid={ldap.dn.escape_dn_chars(uid)},{base}"
    want.update({"objectClass": [b"inetOrgPerson"], "uid": [uid.encode()], "employeeNumber": [key.encode()]})
    conn.add_s(dn, ldap.modlist.addModlist(want))
    taken.add(uid.lower())
    dn_of[key] = dn

for dn, have in conn.search_s(base, ldap.SCOPE_ONELEVEL, "(employeeNumber=*)", ["employeeNumber"]):
    if have["employeeNumber"][0].decode() not in keys:
        conn.delete_s(dn)
conn.unbind_s()
