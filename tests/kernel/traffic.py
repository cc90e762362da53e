"""Small programs that make traffic; run inside a cgroup/netns by Sandbox.run_in."""

ECHO = """
import socket, threading, time
N = {n}
def recv(sock):
    # With sk_skb programs on the socket, a blocking recv can return EAGAIN before data is queued.
    for _ in range(500):
        try:
            return sock.recv(4096)
        except BlockingIOError:
            time.sleep(0.01)
    raise TimeoutError("no data")
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(1)
def serve():
    c, _ = srv.accept()
    while True:
        d = recv(c)
        if not d: break
        c.sendall(d)
    c.close()
t = threading.Thread(target=serve); t.start()
cl = socket.create_connection(("127.0.0.1", srv.getsockname()[1]))
ok = 0
for i in range(N):
    msg = f"hello {{i}}\\n".encode()
    cl.sendall(msg)
    got = b""
    while len(got) < len(msg):
        chunk = recv(cl)
        if not chunk: break
        got += chunk
    ok += got == msg
cl.close(); t.join(); srv.close()
print(ok)
"""

CONNECT = """
import errno, json, socket
listeners = []
for port in {listen}:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen(4); listeners.append(s)
out = {{}}
for port in {ports}:
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port))
        out[port] = ["connected", s.getpeername()[1]]
    except OSError as e:
        out[port] = [errno.errorcode.get(e.errno, str(e.errno)), 0]
    finally:
        s.close()
print(json.dumps(out))
"""

FRAMES = """
import socket, struct
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
payload = b"x" * 18
udp = struct.pack("!HHHH", 12345, 9, 8 + len(payload), 0) + payload
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                 socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.1"))
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
frame = b"\\x00" * 12 + b"\\x08\\x00" + ip + udp
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(("lo", 0))
for _ in range({n}):
    s.send(frame)
"""
