# Sourced after each restore: the overlay shows its layers and its upper.
got=$(nsenter -t "$rpid" -m cat /tmp/ov/merged/a /tmp/ov/merged/b /tmp/ov/merged/c /tmp/ovbind/c 2>&1 | tr '\n' ' ')
[ "$got" = "lower1 lower2 upper upper " ] || check_failed="overlay content: $got"
