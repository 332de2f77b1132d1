#!/usr/bin/env python3
"""Phone accounts for tests/load/phones.sh: N `[[phones]]` entries for the
sbc's config (each its own operator) and the SIPp injection file.

    phones_gen.py N FIRST REALM PASSWORD TOML CSV [ADDRESS_BASE]

User names FIRST .. FIRST+N-1 (e.g. 100000 ..), operator `op-<user>`, the HA1s
MD5 and SHA-256 of `user:realm:password` in hex (README "SIP phones"). The CSV
(SIPp -inf, SEQUENTIAL: call k takes line k) has `user;[authentication
username=user password=PASSWORD];address` (SIPp expands the keyword a field
holds, not a [field] inside the keyword): each phone its own source address,
127.B.x.y counted up from 127.B.0.1 (B is ADDRESS_BASE, default 1), y never 0
or 255 (SIPp -t ui binds a socket on each; all of 127/8 is loopback on Linux).
"""

import hashlib
import sys


def addresses(base):
    for x in range(0, 256):
        for y in range(1, 255):
            yield f"127.{base}.{x}.{y}"


def main():
    if len(sys.argv) not in (7, 8):
        sys.exit(__doc__)
    n, first = int(sys.argv[1]), int(sys.argv[2])
    realm, password, toml_path, csv_path = sys.argv[3:7]
    base = int(sys.argv[7]) if len(sys.argv) == 8 else 1
    if n > 256 * 254:
        sys.exit(f"phones_gen.py: at most {256 * 254} phones (one address each in 127.{base}/16)")
    addr = addresses(base)
    with open(toml_path, "w") as toml, open(csv_path, "w") as csv:
        csv.write("SEQUENTIAL\n")
        for i in range(n):
            user = str(first + i)
            a1 = f"{user}:{realm}:{password}".encode()
            toml.write(
                f'[[phones]]\nusername = "{user}"\noperator = "op-{user}"\n'
                f'ha1_md5 = "{hashlib.md5(a1).hexdigest()}"\n'
                f'ha1_sha256 = "{hashlib.sha256(a1).hexdigest()}"\n\n'
            )
            csv.write(f"{user};[authentication username={user} password={password}];{next(addr)}\n")


if __name__ == "__main__":
    main()
