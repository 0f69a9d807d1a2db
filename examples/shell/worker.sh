#!/bin/sh
# A procpool protocol v1 worker in POSIX sh, no jq: echoes every task's input back.
#
#   procpool run tasks --child examples/shell/worker.sh < inputs.jsonl
#
# It relies on the field order procpool writes (child/PROTOCOL.md, "Field order"):
# {"type":"task","id":N,"attempt":N,"input":VALUE} with an optional
# ,"deadline_ms":N at the end. Replace the `output=` line with real work.
printf '{"type":"ready"}\n'
while IFS= read -r line || [ -n "$line" ]; do
    case $line in
        '{"type":"stop"'*) exit 0 ;;
        '{"type":"task"'*) ;;
        *) continue ;; # a message type this worker does not know: ignore it
    esac
    id=$(printf '%s\n' "$line" | sed -n 's/^{"type":"task","id":\([0-9][0-9]*\),.*/\1/p')
    if [ -z "$id" ]; then
        echo "worker.sh: cannot read a task id in: $line" >&2
        continue
    fi
    input=$(printf '%s\n' "$line" | sed -e 's/,"deadline_ms":[0-9]*}$/}/' \
        -e 's/^{"type":"task","id":[0-9]*,"attempt":[0-9]*,"input":\(.*\)}$/\1/')
    output=$input
    printf '{"type":"result","id":%s,"output":%s}\n' "$id" "$output"
done
exit 0
