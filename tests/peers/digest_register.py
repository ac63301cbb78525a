#!/usr/bin/env python3
"""An independent digest client (RFC 7616 / RFC 8760) for the SHA-256 path.

SIPp 3.6 (Debian's sip-tester) and the Debian builds of baresip and sipsak only
compute MD5 digests, so this small client, written against the RFC with Python's
hashlib and no code of ours, registers users over real UDP sockets choosing the
algorithm it is told from the challenges the server offers.

usage: digest_register.py HOST PORT USERS_FILE ALGORITHM
USERS_FILE lines: extension;password.  Prints "registered=N failed=M"; exits 1 on
any failure.
"""
import hashlib, os, random, re, socket, sys

HOST, PORT, USERS, ALG = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
H = {"SHA-256": hashlib.sha256, "MD5": hashlib.md5}[ALG]

def h(*parts):
    return H(":".join(parts).encode()).hexdigest()

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
sock.settimeout(2.0)
lport = sock.getsockname()[1]

def transact(req):
    for _ in range(4):  # a few retransmissions, bounded
        sock.sendto(req.encode(), (HOST, PORT))
        try:
            while True:
                data, _ = sock.recvfrom(65535)
                text = data.decode("utf-8", "replace")
                branch = re.search(r"branch=([^;\s,]+)", req).group(1)
                if branch in text:
                    return text
        except socket.timeout:
            continue
    return ""

def register(ext, password, cseq, auth=None):
    branch = "z9hG4bK" + os.urandom(6).hex()
    lines = [
        f"REGISTER sip:{HOST}:{PORT} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:{ext}@{HOST}>;tag=py{ext}",
        f"To: <sip:{ext}@{HOST}>",
        f"Call-ID: py-{ext}-{os.getpid()}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <sip:{ext}@127.0.0.1:{lport}>",
        "Expires: 600",
    ]
    if auth:
        lines.append(f"Authorization: {auth}")
    lines += ["Content-Length: 0", "", ""]
    return transact("\r\n".join(lines))

def param(challenge, name):
    m = re.search(name + r'="?([^",]+)"?', challenge)
    return m.group(1) if m else None

ok = failed = 0
for line in open(USERS):
    line = line.strip()
    if not line or ";" not in line or line.startswith("SEQUENTIAL"):
        continue
    ext, password = line.split(";")[:2]
    first = register(ext, password, 1)
    challenges = re.findall(r"^WWW-Authenticate: (.*)$", first, re.M)
    chosen = [c for c in challenges if param(c, "algorithm") == ALG]
    if not first.startswith("SIP/2.0 401") or not chosen:
        failed += 1
        print(f"{ext}: no {ALG} challenge in: {first.splitlines()[:1]}", file=sys.stderr)
        continue
    c = chosen[0].strip()
    realm, nonce = param(c, "realm"), param(c, "nonce")
    uri, cnonce, nc = f"sip:{HOST}:{PORT}", "%016x" % random.getrandbits(64), "00000001"
    ha1 = h(ext, realm, password)
    resp = h(ha1, nonce, nc, cnonce, "auth", h("REGISTER", uri))
    auth = (f'Digest username="{ext}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{resp}", algorithm={ALG}, qop=auth, nc={nc}, cnonce="{cnonce}"')
    second = register(ext, password, 2, auth)
    if second.startswith("SIP/2.0 200") and f"sip:{ext}@127.0.0.1:{lport}" in second:
        ok += 1
    else:
        failed += 1
        print(f"{ext}: {second.splitlines()[:1]}", file=sys.stderr)
print(f"registered={ok} failed={failed}")
sys.exit(1 if failed or not ok else 0)
