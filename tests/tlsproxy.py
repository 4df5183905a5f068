"""A TLS front for the Temporal dev server (which speaks only plain gRPC), as a site's TLS
terminating load balancer would be: it requires a client certificate signed by the CA
(mutual TLS), offers HTTP/2 by ALPN, and passes the bytes on to the dev server.

    python -m tests.tlsproxy LISTEN_PORT TARGET_HOST:PORT CERT KEY CLIENT_CA
"""

from __future__ import annotations

import asyncio
import ssl
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def main(port: int, target: str, cert: str, key: str, client_ca: str) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=client_ca)
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    host, target_port = target.rsplit(":", 1)

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(host, int(target_port))
        await asyncio.gather(_pipe(client_reader, server_writer), _pipe(server_reader, client_writer))

    server = await asyncio.start_server(relay, "127.0.0.1", port, ssl=context)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    port, target, cert, key, client_ca = sys.argv[1:6]
    asyncio.run(main(int(port), target, cert, key, client_ca))
