#!/usr/bin/env python3
"""A TLS-terminating TCP proxy for the Kafka security tests.

tansu 0.6 accepts `--cert`/`--key` but never wraps its listener in TLS, so the tests put
this in front of it: clients speak TLS to LISTEN (the certificate CERT with key KEY,
which the client verifies against its CA and host name as it would a real broker's), the
proxy forwards the decrypted bytes to UPSTREAM (tansu's plaintext listener) and back.
The Kafka protocol, SASL included, passes through untouched: tansu advertises LISTEN in
its metadata so every connection of a client comes back through here.

Usage: tls_proxy.py --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT --cert PEM --key PEM

Prints "listening" on stdout when it accepts connections; runs until killed.
"""

import argparse
import asyncio
import ssl
import sys


def host_port(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        try:
            writer.close()
        except (ConnectionError, ssl.SSLError):
            pass


async def serve(args):
    upstream_host, upstream_port = host_port(args.upstream)

    async def on_client(client_reader, client_writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(upstream_host, upstream_port)
        except OSError as e:
            print(f"tls_proxy.py: upstream {args.upstream}: {e}", file=sys.stderr, flush=True)
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, up_writer), pipe(up_reader, client_writer))

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    host, port = host_port(args.listen)
    server = await asyncio.start_server(on_client, host, port, ssl=context)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="host:port to accept TLS on")
    parser.add_argument("--upstream", required=True, help="host:port of the plaintext broker")
    parser.add_argument("--cert", required=True, help="server certificate chain (PEM)")
    parser.add_argument("--key", required=True, help="server private key (PEM)")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
