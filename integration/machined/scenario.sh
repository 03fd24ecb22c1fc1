#!/bin/bash
# Runs inside the systemd "host" container (see run.sh). For each guest,
# under systemd-nspawn and then nixspawn (same tree, same argv): machinectl
# list/status/show, shell, systemctl -M, journalctl -M, poweroff, terminate.
# The two launchers' answers are normalised (names, PIDs, times, paths)
# and must agree line by line. Then the unit template and the
# systemd-nspawn@ drop-in. Exit status: the number of failed checks.
set -uo pipefail
# shellcheck disable=SC1091
. /results/env
export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 SYSTEMD_PAGER= SYSTEMD_COLORS=0
failures=0
out=/var/tmp/scenario
# For debugging: keep the host up without running anything (run.sh HOLD=1).
[ -e /results/hold ] && exec sleep infinity
mkdir -p "$out"

say() { echo "== $*"; }
fail() {
	echo "FAIL: $*"
	failures=$((failures + 1))
}
pass() { echo "ok: $*"; }

# Wait up to $1 seconds for a command to succeed.
until_ok() {
	local limit=$1
	shift
	local i
	for ((i = 0; i < limit * 10; i++)); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	return 1
}
gone() { ! machinectl show "$1" >/dev/null 2>&1; }
# Wait for a background launcher; sets $status to its exit status (124: timed out).
wait_launcher() {
	local pid=$1 i
	for ((i = 0; i < 600; i++)); do
		if ! kill -0 "$pid" 2>/dev/null; then
			wait "$pid"
			status=$?
			return
		fi
		sleep 0.1
	done
	kill -9 "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	status=124
}
# The guest's own bus answers (it starts a moment after the machine is registered).
guest_bus_up() { systemctl -M "$1" is-system-running 2>&1 | grep -qv "Failed to connect"; }

say "host: $(. /etc/os-release; echo "$PRETTY_NAME"), systemd $(systemctl --version | head -1 | cut -d' ' -f2), cgroup $(stat -fc %T /sys/fs/cgroup)"
until_ok 30 machinectl list || fail "machined is not reachable on the host's bus"

nixos_state=/var/tmp/nixos-state
mkdir -p "$nixos_state/usr" "$nixos_state/etc"
: >"$nixos_state/etc/os-release"

# argv for a guest: a private copy of a Debian tree (-x would make nspawn
# copy the tree for every boot, v262 into the tree itself), NixOS the
# nixos-container way. $2: the launcher, whose copy it is.
trees=/var/tmp/trees
guest_argv() {
	case $1 in
	bookworm | sid) echo "-D $trees/$2-$1 -b" ;;
	nixos) echo "-D $nixos_state --bind-ro=/nix/store --kill-signal=SIGRTMIN+3 $NIXOS_SYSTEMD/init" ;;
	toplevel) echo "--toplevel=$NIXOS_SYSTEMD" ;;
	esac
}
launcher_bin() {
	case $1 in
	nspawn) echo systemd-nspawn ;;
	nixspawn) echo /usr/local/bin/nixspawn ;;
	esac
}

# Start a guest in the background; sets $launcher_pid.
start_guest() {
	local launcher=$1 guest=$2 name=$3 t0 t1 t2
	t0=$(date +%s%N)
	# shellcheck disable=SC2046
	$(launcher_bin "$launcher") --console=read-only -M "$name" $(guest_argv "$guest" "$launcher") \
		>"$out/$name.console" 2>&1 </dev/null &
	launcher_pid=$!
	if ! until_ok 60 machinectl show "$name"; then
		fail "$launcher/$guest: $name never appeared in machinectl list"
		tail -n 20 "$out/$name.console"
		return 1
	fi
	t1=$(date +%s%N)
	local state
	until_ok 60 guest_bus_up "$name" || fail "$launcher/$guest: no bus in $name after 60 s"
	state=$(timeout 120 systemctl -M "$name" is-system-running --wait 2>&1)
	t2=$(date +%s%N)
	echo "$launcher/$guest: is-system-running --wait: $state"
	# Informational (polled every 100 ms; compare side by side, not absolutely).
	echo "timing: $launcher $guest registered $(((t1 - t0) / 1000000)) ms, running $(((t2 - t0) / 1000000)) ms"
}

# `machinectl shell NAME echo ok`, without the terminal's carriage returns
# and the OSC 3008 context sequences newer systemd wraps sessions in.
shell_ok() {
	machinectl -q shell "$1" /bin/sh -c 'echo ok' 2>&1 | tr -d '\r' | sed -E 's/\x1b\][^\x1b]*\x1b\\//g'
}

# What machinectl and friends say, with names, PIDs, times and paths masked.
describe() {
	local launcher=$1 guest=$2 name=$3 f=$out/$launcher-$guest.facts
	{
		echo "list: $(machinectl list --no-legend | awk -v n="$name" '$1 == n { $1 = "NAME"; $3 = "SERVICE"; print }')"
		machinectl show "$name" -p Class -p State -p RootDirectory -p Unit -p Leader -p Id -p Service |
			sed -E "s/^(RootDirectory|Unit|Leader|Id|Service)=.+/\1=<set>/"
		machinectl status "$name" --no-pager -n 0 | sed -E \
			-e "s/$name/NAME/g" -e 's/[0-9a-f]{32}/UUID/g' \
			-e 's/^([[:space:]]*Since:).*/\1 TIME/' \
			-e 's/^([[:space:]]*Leader:) [0-9]+ /\1 PID /' \
			-e 's/^([[:space:]]*Superv\.:) .*/\1 LAUNCHER/' \
			-e 's/^([[:space:]]*Service:) [^;]+;/\1 SERVICE;/' \
			-e 's/^([[:space:]]*Root:) .*/\1 PATH/' \
			-e 's/^([[:space:]]*Unit:) .*/\1 UNIT/' |
			# The cgroup tree: its cgroups, not the processes in them (PIDs, and
			# command lines caught mid-exec such as "(agetty)").
			grep -v -E '─[0-9]+ '
		# The unit's spelling (machine-NAME.scope from machined 252,
		# NAME.scope from nspawn 262) with the name masked.
		local escaped=${name//-/\\x2d}
		local unit
		unit=$(machinectl show "$name" -p Unit --value)
		unit=${unit//"$escaped"/NAME}
		echo "unit: ${unit//"$name"/NAME}"
		echo "shell: $(shell_ok "$name")"
		echo "is-system-running: $(systemctl -M "$name" is-system-running 2>&1)"
		if journalctl -M "$name" -b -q --no-pager -n 20 2>/dev/null | grep -q .; then
			echo "journalctl -M: entries"
		else
			echo "journalctl -M: none"
		fi
	} >"$f"
	sed "s/^/  $launcher\/$guest: /" "$f"
}

leader_of() { machinectl show "$1" -p Leader --value 2>/dev/null; }
# Registered again, with a leader other than $2 (read once: between boots
# the machine is briefly not registered at all).
new_leader() {
	local l
	l=$(leader_of "$1")
	[ -n "$l" ] && [ "$l" != "$2" ]
}

# One guest under one launcher: describe it, reboot it, power it off; start
# it again and terminate it; start it again and kill its PID 1 with the
# poweroff signal. Each stop must end the launcher and the registration.
exercise() {
	local launcher=$1 guest=$2 name=$3 facts=$out/$1-$2.facts before after
	say "$launcher: $guest as $name"
	if [ -d "/guests/$guest" ]; then
		rm -rf "${trees:?}/$launcher-$guest"
		mkdir -p "$trees"
		cp -a "/guests/$guest" "$trees/$launcher-$guest"
	fi
	start_guest "$launcher" "$guest" "$name" || return
	describe "$launcher" "$guest" "$name"
	grep -qx "shell: ok" "$facts" || fail "$launcher/$guest: machinectl shell did not print ok"
	grep -q "^list: .* container " "$facts" || fail "$launcher/$guest: not listed as a container"
	grep -qx "is-system-running: running" "$facts" || fail "$launcher/$guest: systemctl -M does not say running"
	grep -qx "journalctl -M: entries" "$facts" || fail "$launcher/$guest: journalctl -M shows nothing"
	# A getty on a pty from machined: its prompt is the proof (closed by timeout).
	timeout 10 script -qec "machinectl login $name" /dev/null </dev/null >"$out/login" 2>&1
	if grep -q "login:" "$out/login"; then
		echo "login: prompt" >>"$facts"
	else
		echo "login: no prompt" >>"$facts"
		fail "$launcher/$guest: machinectl login showed no login prompt: $(tr -d '\r' <"$out/login" | head -c 300)"
	fi
	# The getty we left on machined's pty would otherwise hold up the
	# guest's next shutdown (its stop timeout is 90 s).
	systemctl -M "$name" stop 'container-getty@*.service' >/dev/null 2>&1 || true

	before=$(leader_of "$name")
	local t_reboot
	t_reboot=$(date +%s)
	machinectl reboot "$name"
	until_ok 120 new_leader "$name" "$before"
	after=$(leader_of "$name")
	until_ok 60 guest_bus_up "$name"
	if [ -n "$after" ] && [ "$after" != "$before" ] &&
		[ "$(timeout 120 systemctl -M "$name" is-system-running --wait 2>&1)" = running ]; then
		echo "reboot: new leader, running" >>"$facts"
		pass "$launcher/$guest: machinectl reboot brought it back with a new leader ($(($(date +%s) - t_reboot)) s)"
	else
		echo "reboot: leader $before -> ${after:-none}" >>"$facts"
		fail "$launcher/$guest: machinectl reboot (leader $before -> ${after:-none} after $(($(date +%s) - t_reboot)) s); its console:"
		tail -n 40 "$out/$name.console"
	fi

	machinectl poweroff "$name"
	wait_launcher "$launcher_pid"
	echo "poweroff: launcher exit $status" >>"$facts"
	[ "$status" = 0 ] && pass "$launcher/$guest: machinectl poweroff, launcher exited 0" ||
		fail "$launcher/$guest: machinectl poweroff, launcher exited $status"
	until_ok 10 gone "$name" && pass "$launcher/$guest: gone after poweroff" ||
		fail "$launcher/$guest: $name still listed after poweroff"

	start_guest "$launcher" "$guest" "$name" || return
	machinectl terminate "$name"
	wait_launcher "$launcher_pid"
	echo "terminate: launcher exit $status" >>"$facts"
	[ "$status" != 124 ] && pass "$launcher/$guest: machinectl terminate stopped it (exit $status)" ||
		fail "$launcher/$guest: machinectl terminate did not stop it"
	until_ok 10 gone "$name" && pass "$launcher/$guest: gone after terminate" ||
		fail "$launcher/$guest: $name still listed after terminate"

	start_guest "$launcher" "$guest" "$name" || return
	machinectl kill "$name" --kill-whom=leader --signal=SIGRTMIN+4
	wait_launcher "$launcher_pid"
	echo "kill leader SIGRTMIN+4: launcher exit $status" >>"$facts"
	[ "$status" = 0 ] && pass "$launcher/$guest: machinectl kill --signal=SIGRTMIN+4 powered it off" ||
		fail "$launcher/$guest: machinectl kill --signal=SIGRTMIN+4: launcher exited $status"
	until_ok 10 gone "$name" || fail "$launcher/$guest: $name still listed after kill"
}

# run.sh with NIXSPAWN_HARNESS_ONLY=slice: --slice and --property alone.
if [ "${HARNESS_ONLY:-}" = slice ]; then
	# shellcheck source=integration/machined/slice.sh
	. /harness/slice.sh
	say "$failures failed checks"
	exit "$failures"
fi

# run.sh with NIXSPAWN_HARNESS_ONLY=network: the network part alone.
if [ "${HARNESS_ONLY:-}" = network ]; then
	# shellcheck source=integration/machined/network.sh
	. /harness/network.sh
	say "$failures failed checks"
	exit "$failures"
fi

for guest in bookworm sid nixos; do
	exercise nspawn "$guest" "ns-$guest"
	exercise nixspawn "$guest" "nx-$guest"
	if diff -u "$out/nspawn-$guest.facts" "$out/nixspawn-$guest.facts"; then
		pass "$guest: systemd-nspawn and nixspawn agree field by field"
	else
		fail "$guest: systemd-nspawn and nixspawn disagree (diff above)"
	fi
done

# The launcher itself killed: its janitor takes the guest down, and the
# machine, its scope and its cgroups go with it.
say "nixspawn killed with SIGKILL"
start_guest nixspawn bookworm nx-killed && {
	kill -9 "$launcher_pid"
	wait "$launcher_pid" 2>/dev/null
	until_ok 10 gone nx-killed && pass "killed launcher: machine unregistered" ||
		fail "killed launcher: nx-killed still listed"
	until_ok 10 bash -c '! systemctl list-units --all --no-legend '*killed*.scope' | grep -q .' &&
		pass "killed launcher: scope gone" || fail "killed launcher: scope left: $(systemctl list-units --all --no-legend '*killed*')"
	until_ok 10 bash -c '! ls -d /sys/fs/cgroup/machine.slice/*killed* /sys/fs/cgroup/unified/machine.slice/*killed* 2>/dev/null | grep -q .' &&
		pass "killed launcher: cgroups gone" || fail "killed launcher: cgroups left"
}

# Any local user may address a signal to any connection on the system bus:
# a RequestStop for the guest's scope, sent to the launcher by an
# unprivileged process (twice: the second would be SIGKILL), must not
# stop the guest. Only systemd's own does: `machinectl terminate` still works.
say "a forged RequestStop from another local user"
start_guest nixspawn bookworm nx-spoof && {
	before=$(leader_of nx-spoof)
	unit=$(machinectl show nx-spoof -p Unit --value)
	object=$(busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1 \
		org.freedesktop.systemd1.Manager GetUnit s "$unit" | awk '{ print $2 }' | tr -d '"')
	conn=$(busctl --system list --unique --no-legend | awk -v p="$launcher_pid" '$2 == p { print $1 }')
	echo "spoof: unit $unit at $object, launcher $launcher_pid on the bus as ${conn:-nothing}"
	if [ -z "$conn" ] || [ -z "$object" ]; then
		fail "spoof: found no bus connection for the launcher or no unit object"
	else
		for _ in 1 2; do
			setpriv --reuid=65534 --regid=65534 --clear-groups \
				dbus-send --system --type=signal --dest="$conn" "$object" \
				org.freedesktop.systemd1.Scope.RequestStop ||
				fail "spoof: dbus-send as nobody failed"
			sleep 1
		done
		sleep 2
		if kill -0 "$launcher_pid" 2>/dev/null && [ "$(leader_of nx-spoof)" = "$before" ] &&
			[ "$(systemctl -M nx-spoof is-system-running 2>&1)" = running ]; then
			pass "spoof: two forged RequestStop signals left the guest running (leader $before)"
		else
			fail "spoof: a forged RequestStop stopped the guest (launcher alive: $(kill -0 "$launcher_pid" 2>/dev/null && echo yes || echo no), leader $before -> $(leader_of nx-spoof))"
		fi
	fi
	machinectl terminate nx-spoof
	wait_launcher "$launcher_pid"
	[ "$status" != 124 ] && pass "spoof: machinectl terminate still stops it (exit $status)" ||
		fail "spoof: machinectl terminate did not stop it"
	until_ok 10 gone nx-spoof || fail "spoof: nx-spoof still listed after terminate"
}

# A launcher whose registration machined refused (the name is another
# launcher's machine), SIGKILLed: its janitor must not unregister a
# machine this run never registered. The second launcher runs as a
# service with --keep-unit (so no scope of the same name stands in its
# way) and KillMode=process (so only the launcher is killed, as by a
# SIGKILL from anywhere, and its janitor is left to clean up).
say "a killed launcher that never registered leaves the name's machine alone"
start_guest nspawn bookworm ns-victim && {
	victim_pid=$launcher_pid
	victim_leader=$(leader_of ns-victim)
	systemd-run -q --unit=nx-victim -p Delegate=yes -p KillMode=process \
		/usr/local/bin/nixspawn --keep-unit --console=read-only -M ns-victim \
		-D "$trees/nixspawn-bookworm" -b
	cg=$(systemctl show nx-victim -p ControlGroup --value)
	# The guest's systemd moves itself below payload: ask whether anything is in the subtree.
	payload_busy() { grep -qsx "populated 1" "/sys/fs/cgroup/unified$cg/payload/cgroup.events" "/sys/fs/cgroup$cg/payload/cgroup.events"; }
	if until_ok 30 payload_busy; then
		echo "victim: $(journalctl -u nx-victim --no-pager -q | grep -m1 -o 'nixspawn: .*unregistered.*')"
		systemctl kill -s SIGKILL --kill-whom=main nx-victim
		until_ok 20 bash -c "! grep -qsx 'populated 1' /sys/fs/cgroup/unified$cg/payload/cgroup.events /sys/fs/cgroup$cg/payload/cgroup.events" &&
			pass "victim: the killed launcher's janitor stopped its guest" ||
			fail "victim: the killed launcher's guest is still running"
		sleep 2
		if [ "$(leader_of ns-victim)" = "$victim_leader" ]; then
			pass "victim: ns-victim is still registered, leader $victim_leader"
		else
			fail "victim: the janitor unregistered a machine its launcher never registered (leader $victim_leader -> $(leader_of ns-victim))"
		fi
	else
		fail "victim: the second launcher's guest never started: $(journalctl -u nx-victim --no-pager -n 20)"
	fi
	systemctl stop nx-victim 2>/dev/null
	systemctl reset-failed nx-victim 2>/dev/null
	machinectl terminate ns-victim 2>/dev/null
	wait_launcher "$victim_pid"
	until_ok 10 gone ns-victim || fail "victim: ns-victim still listed after terminate"
}

# The NixOS toplevel booted nixspawn's own way (closure-only store, no
# directory): the same answers as the nixos-container argv, but no root.
exercise nixspawn toplevel nx-toplevel
sed -e '/^RootDirectory=/d' -e '/Root: PATH/d' "$out/nixspawn-nixos.facts" >"$out/a"
sed -e '/^RootDirectory=/d' -e '/Root: PATH/d' "$out/nixspawn-toplevel.facts" >"$out/b"
diff -u "$out/a" "$out/b" && pass "toplevel: same answers as the nixos-container argv" ||
	fail "toplevel: answers differ from the nixos-container argv"

# The unit template (--keep-unit under a service) and the drop-in that
# makes `machinectl start` run nixspawn.
say "systemd-nixspawn@.service and machinectl start"
cp /harness-units/systemd-nixspawn@.service /etc/systemd/system/
mkdir -p /etc/systemd/system/systemd-nspawn@.service.d
cp "/harness-units/systemd-nspawn@.service.d/nixspawn.conf" /etc/systemd/system/systemd-nspawn@.service.d/
systemctl daemon-reload
mkdir -p /var/lib/machines
cp -a /guests/bookworm /var/lib/machines/tmpl
for how in template machinectl; do
	case $how in
	template) unit=systemd-nixspawn@tmpl.service start=(systemctl start "$unit") ;;
	machinectl) unit=systemd-nspawn@tmpl.service start=(machinectl start tmpl) ;;
	esac
	if ! timeout 120 "${start[@]}"; then
		fail "$how: ${start[*]} failed"
		journalctl -u "$unit" --no-pager -n 30
		continue
	fi
	until_ok 30 machinectl show tmpl || fail "$how: tmpl not registered"
	echo "  $how: $(machinectl show tmpl -p Unit -p Service -p Class | tr '\n' ' ')"
	[ "$(machinectl show tmpl -p Unit --value)" = "$unit" ] && pass "$how: machine's unit is $unit" ||
		fail "$how: machine's unit is not $unit"
	until_ok 60 guest_bus_up tmpl
	state=$(timeout 120 systemctl -M tmpl is-system-running --wait 2>&1)
	if [ "$state" = running ]; then
		pass "$how: guest is running"
	else
		fail "$how: guest says $state"
		journalctl -u "$unit" --no-pager -n 40
	fi
	[ "$(shell_ok tmpl)" = ok ] &&
		pass "$how: machinectl shell" || fail "$how: machinectl shell"
	machinectl poweroff tmpl
	until_ok 60 bash -c "! systemctl is-active -q $unit" || fail "$how: $unit still active after poweroff"
	result=$(systemctl show "$unit" -p Result --value)
	[ "$result" = success ] && pass "$how: poweroff ended $unit with success" ||
		fail "$how: $unit ended with $result"
	until_ok 10 gone tmpl || fail "$how: tmpl still listed"
done

# Networks: DHCP from the host's networkd, Iface:/Address:, names, ports,
# zones, nixos-container's addressing.
# shellcheck source=integration/machined/network.sh
. /harness/network.sh

say "$failures failed checks"
exit "$failures"
