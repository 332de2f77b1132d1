# Node A receives the INVITE; node B (another address) answers it with A's Via.
import socket, re, sys
a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.bind(("127.0.0.11", 26561)); a.settimeout(10)
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); b.bind(("127.0.0.12", 26562))
data, kam = a.recvfrom(65535)
msg = data.decode()
head = msg.split("\r\n\r\n")[0].split("\r\n")
keep = [h for h in head[1:] if re.match(r"(?i)^(via|from|to|call-id|cseq|record-route):", h)]
def resp(code, text, tag=True):
    hs = []
    for h in keep:
        if h.lower().startswith("to:") and tag: h += ";tag=nodeb1"
        hs.append(h)
    body = ""
    if code == 200:
        body = "v=0\r\no=B 1 1 IN IP4 127.0.0.12\r\ns=-\r\nc=IN IP4 127.0.0.12\r\nt=0 0\r\nm=audio 41000 RTP/AVP 0\r\n"
        hs.append("Contact: <sip:far@127.0.0.12:26562>")
        hs.append("Content-Type: application/sdp")
    hs.append(f"Content-Length: {len(body)}")
    return (f"SIP/2.0 {code} {text}\r\n" + "\r\n".join(hs) + "\r\n\r\n" + body).encode()
print("A got INVITE from", kam, flush=True)
b.sendto(resp(180, "Ringing"), kam)
b.sendto(resp(200, "OK"), kam)
print("B sent 180 and 200 from 127.0.0.12", flush=True)
b.settimeout(5)
try:
    d, src = b.recvfrom(65535); print("B got:", d.decode().split("\r\n")[0], flush=True)
except Exception as e:
    print("B got nothing:", e)
