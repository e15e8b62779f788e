"""``http_get.get`` against servers on loopback that misbehave the ways a slow, broken or hostile host does:
headers or a body dripped a byte at a time (cut off at the deadline, which a socket timeout alone never
reaches), a body cut short of its declared length, a redirect out of http(s), a body without end."""

import socket
import time
import urllib.error

import pytest

from threegen_dagster import http_get

from .raw_host import RawHost


class Host(RawHost):
    def __init__(self, answer) -> None:
        super().__init__(answer)
        self.url += "/x.png"


def drip(conn: socket.socket, data: bytes) -> None:
    for i in range(len(data)):
        conn.sendall(data[i: i + 1])
        time.sleep(0.05)


@pytest.mark.parametrize("answer", [
    lambda conn: drip(conn, b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 2000 + b"\r\n\r\n"),  # headers never end
    lambda conn: (conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n"), drip(conn, b"b" * 2000)),
])
def test_a_dripping_server_is_cut_off_at_the_deadline(answer) -> None:
    host = Host(answer)  # each byte comes well within the 1 s socket timeout; the whole never does
    with pytest.raises(TimeoutError, match=r"timed out: no whole answer within 1 s"):
        http_get.get(host.url, max_bytes=10_000, timeout_s=1)
    host.close()


def test_a_body_cut_short_of_its_declared_length_is_no_answer() -> None:
    host = Host(lambda conn: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"c" * 40))
    with pytest.raises(ConnectionError, match=r"the body stopped after 40 of 100 bytes"):
        http_get.get(host.url, max_bytes=1000, timeout_s=10)
    host.close()


def test_a_redirect_out_of_http_is_not_followed() -> None:
    host = Host(lambda conn: conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: ftp://127.0.0.1/x\r\n"
                                          b"Content-Length: 0\r\n\r\n"))
    with pytest.raises(urllib.error.HTTPError, match=r"a redirect to ftp:// is not followed"):
        http_get.get(host.url, max_bytes=1000, timeout_s=10)
    host.close()


def test_a_body_without_end_stops_at_the_bound_and_a_good_one_arrives_whole() -> None:
    def endless(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
        while True:
            conn.sendall(b"d" * 65536)

    host = Host(endless)
    with pytest.raises(http_get.TooLarge, match=r"over 100,000 bytes; the limit is 100,000"):
        http_get.get(host.url, max_bytes=100_000, timeout_s=10)
    host.close()
    good = Host(lambda conn: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"))
    assert http_get.get(good.url, max_bytes=5, timeout_s=10) == b"hello"
    good.close()
