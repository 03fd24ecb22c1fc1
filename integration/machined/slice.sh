# shellcheck shell=bash
# Sourced by scenario.sh (run.sh with NIXSPAWN_HARNESS_ONLY=slice): --slice
# and --property under systemd-nspawn and nixspawn, same tree and argv: the
# transient scope each launcher has systemd make must be in the slice and
# carry the properties, and both launchers' scopes must agree.
bb=/var/tmp/bb
mkdir -p "$bb/usr/bin" "$bb/etc"
cp /usr/local/bin/busybox "$bb/usr/bin/busybox"
for applet in sh sleep; do ln -sf busybox "$bb/usr/bin/$applet"; done
ln -sfn usr/bin "$bb/bin"
for launcher in nspawn nixspawn; do
	name=p16-$launcher
	$(launcher_bin "$launcher") -q --register=no --console=pipe -M "$name" -D "$bb" \
		--slice=p16test-web --property=MemoryMax=100M --property=TasksMax=77 \
		/bin/sh -c 'sleep 5' >"$out/$name.console" 2>&1 </dev/null &
	pid=$!
	unit=
	for ((i = 0; i < 100; i++)); do
		unit=$(systemctl list-units --type=scope --no-legend --plain 2>/dev/null | awk '{print $1}' | grep -F "p16" | head -1)
		[ -n "$unit" ] && break
		sleep 0.1
	done
	if [ -z "$unit" ]; then
		fail "$launcher: no scope for $name (console: $(tail -n 3 "$out/$name.console"))"
	else
		systemctl show -p Slice -p MemoryMax -p TasksMax "$unit" >"$out/$launcher.slice"
		echo "$launcher: $unit: $(tr '\n' ' ' <"$out/$launcher.slice")"
		if grep -qx "Slice=p16test-web.slice" "$out/$launcher.slice" &&
			grep -qx "MemoryMax=104857600" "$out/$launcher.slice" &&
			grep -qx "TasksMax=77" "$out/$launcher.slice"; then
			pass "$launcher: the scope is in p16test-web.slice with MemoryMax and TasksMax"
		else
			fail "$launcher: the scope's slice or properties are wrong"
		fi
	fi
	wait "$pid"
done
if diff -u "$out/nspawn.slice" "$out/nixspawn.slice"; then
	pass "systemd-nspawn and nixspawn put the scope in the same slice with the same properties"
else
	fail "systemd-nspawn and nixspawn scopes differ (diff above)"
fi
