"""A target process for the TransferEngine tests: an engine serving one registered buffer.

    engine_target.py SIZE

Prints {"segment": name, "base": address, "length": SIZE} and then answers commands on stdin,
one per line: "sha OFFSET LENGTH" (sha256 of that part of its buffer), "notes" (the
notifications received so far, JSON), "quit" (close and exit)."""
import hashlib
import json
import sys

import kvferry


def pattern(size):
    return bytes((i * 7 + (i >> 12)) & 0xFF for i in range(size))


def main():
    size = int(sys.argv[1])
    engine = kvferry.TransferEngine()
    engine.initialize({"local_hostname": "127.0.0.1", "metadata_server": "P2PHANDSHAKE",
                       "protocol": "tcp"})
    buffer = bytearray(pattern(size))
    engine.register_memory(buffer)
    print(json.dumps({"segment": engine.segment_name,
                      "base": kvferry.buffer_address(buffer)[0], "length": size}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "sha":
            off, length = int(words[1]), int(words[2])
            print(hashlib.sha256(buffer[off:off + length]).hexdigest(), flush=True)
        elif words[0] == "notes":
            notes = engine.get_notifies()
            print(json.dumps([[sender, message.decode()] for sender, message in notes]),
                  flush=True)
        elif words[0] == "quit":
            break
    engine.close()


if __name__ == "__main__":
    main()
