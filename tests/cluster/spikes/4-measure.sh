#!/bin/bash
# kill -9 node A and poll dispatcher until its flags leave A (active)
pid=$(pgrep -f "sbc --config sbc-a.toml")
t0=$(date +%s%N)
kill -9 $pid
while true; do
  f=$(kamcmd -s unix:/tmp/spike4/kamctl.sock dispatcher.list 2>/dev/null | grep -A1 "127.0.0.11" | grep FLAGS | awk '{print $2}')
  if [[ "$f" != A* ]]; then t1=$(date +%s%N); echo "flags=$f after $(( (t1-t0)/1000000 )) ms"; break; fi
  sleep 0.02
done
