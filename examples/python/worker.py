import json, sys  # A complete procpool protocol v1 worker: doubles numbers, echoes anything else.
def send(message): print(json.dumps(message), flush=True)
send({"type": "ready"})
for line in sys.stdin:
    message = json.loads(line)
    if message["type"] == "stop":
        break
    if message["type"] == "task":
        x = message["input"]
        send({"type": "result", "id": message["id"], "output": x * 2 if isinstance(x, (int, float)) else x})
