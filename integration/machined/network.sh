# Sourced by scenario.sh (its helpers and counters): guests with networks
# on a host that runs systemd-networkd, as with systemd-nspawn. The host
# container has a network namespace of its own (run.sh), so nothing here
# touches the machine's interfaces.
#   - bookworm and sid guests with -n, under each launcher: the host's
#     networkd serves them DHCP, `machinectl status` shows Iface: and
#     Address: (compared between the launchers), the host resolves the guest
#     by name (nss-mymachines) and pings it, and a -p forward answers a
#     client in another guest's network namespace;
#   - two nixspawn guests on one --network-zone reach each other;
#   - the NixOS-shaped toplevel with nixos-container's privateNetwork argv,
#     addressed as nixos-container addresses it (its postStart on the host,
#     its container-init in the guest), under each launcher.
# busybox (bound in by run.sh at /usr/local/bin/busybox) stands in for
# ping, nc and ip, which minbase trees lack.

bb=/usr/local/bin/busybox
net_trees=/var/tmp/net-trees

# A private copy of a Debian tree with systemd-networkd enabled (its
# 80-container-host0.network asks for DHCP on host0).
net_tree() {
	local launcher=$1 guest=$2 dir=$net_trees/$1-$2-$3
	rm -rf "$dir"
	mkdir -p "$net_trees"
	cp -a "/guests/$guest" "$dir"
	systemctl --root="$dir" enable systemd-networkd.service >/dev/null 2>&1
	echo "$dir"
}

# Start `launcher ARGS...` as $name in the background; sets $launcher_pid.
net_start() {
	local launcher=$1 name=$2
	shift 2
	$(launcher_bin "$launcher") --console=read-only -M "$name" "$@" \
		>"$out/$name.console" 2>&1 </dev/null &
	launcher_pid=$!
	if ! until_ok 60 machinectl show "$name"; then
		fail "$launcher: $name never registered"
		tail -n 20 "$out/$name.console"
		return 1
	fi
	until_ok 60 guest_bus_up "$name"
	timeout 120 systemctl -M "$name" is-system-running --wait >/dev/null 2>&1
	return 0
}

net_stop() {
	machinectl poweroff "$1" 2>/dev/null
	wait_launcher "$launcher_pid"
	until_ok 20 gone "$1" || fail "$1 still listed after poweroff"
}

# The guest's first IPv4 address as machined reports it (DHCP from the
# host), not an IPv4LL one (169.254/16) the guest may take meanwhile.
ipv4_of() {
	machinectl status "$1" --no-pager -n 0 2>/dev/null |
		sed -n -E 's/^[[:space:]]*(Address:)?[[:space:]]*([0-9]+\.[0-9]+\.[0-9]+\.[0-9]+)$/\2/p' |
		grep -v '^169\.254\.' | head -n 1
}
has_ipv4() { [ -n "$(ipv4_of "$1")" ]; }

# Iface: and Address: of `machinectl status`, addresses masked (DHCP
# leases differ from boot to boot), with the machine's name masked.
net_facts() {
	local name=$1
	machinectl status "$name" --no-pager -n 0 | sed -n -E '/^[[:space:]]*Iface:/,/^[[:space:]]*OS:/p' |
		grep -v -E '^[[:space:]]*OS:' |
		sed -E -e "s/$name/NAME/g" \
			-e 's/[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+/IPV4/g' \
			-e 's/[0-9a-f]{1,4}(:[0-9a-f]{0,4}){2,7}(%[0-9a-z-]+)?/IPV6/g'
	echo "NetworkInterfaces: $(machinectl show "$name" -p NetworkInterfaces --value | sed -E 's/[0-9]+/N/g')"
	# Both ends' MACs (nspawn's hash of the host's machine-id and the name).
	local iface leader
	iface=$(machinectl status "$name" --no-pager -n 0 | sed -n -E 's/^[[:space:]]*Iface:[[:space:]]*//p')
	leader=$(leader_of "$name")
	echo "host side $iface: $($bb ip -o link show "$iface" | grep -o 'link/ether [0-9a-f:]*')"
	echo "guest host0: $(nsenter -t "$leader" -n $bb ip -o link show host0 | grep -o 'link/ether [0-9a-f:]*')"
}

say "networking: systemd-networkd on the host"
if systemctl is-active -q systemd-networkd; then
	pass "systemd-networkd runs on the host"
else
	fail "systemd-networkd is not running on the host: $(systemctl status systemd-networkd --no-pager 2>&1 | tail -n 5)"
fi

for guest in bookworm sid; do
	for launcher in nspawn nixspawn; do
		# One name under both launchers: the same ve- name (shortened
		# with nspawn's hash for bookworm's 15+ bytes) and the same MACs.
		name=net-$guest-machine
		say "networking: $launcher/$guest -n as $name"
		dir=$(net_tree "$launcher" "$guest" server)
		net_start "$launcher" "$name" -D "$dir" -b -n -p 8080:80 \
			--bind-ro="$bb:$bb" || continue
		if until_ok 60 has_ipv4 "$name"; then
			# Its IPv6 link-local address settles too (duplicate detection).
			sleep 3
			addr=$(ipv4_of "$name")
			pass "$launcher/$guest: DHCP address $addr from the host's networkd"
		else
			fail "$launcher/$guest: no address after 60 s: $(machinectl status "$name" --no-pager -n 0 | head -n 12)"
			addr=
		fi
		net_facts "$name" >"$out/net-$launcher-$guest.facts"
		ve=$(machinectl status "$name" --no-pager -n 0 | sed -n -E 's/^[[:space:]]*Iface:[[:space:]]*//p')
		sed "s/^/  $launcher\/$guest: /" "$out/net-$launcher-$guest.facts"
		# By name, through nss-mymachines (machined asks the guest's namespace).
		resolved=$(getent ahostsv4 "$name" 2>/dev/null | awk 'NR == 1 { print $1 }')
		if [ -n "$addr" ] && [ "$resolved" = "$addr" ]; then
			pass "$launcher/$guest: $name resolves to $resolved (nss-mymachines)"
		else
			fail "$launcher/$guest: $name resolves to '${resolved}', not '$addr' ($(grep hosts /etc/nsswitch.conf))"
		fi
		if [ -n "$resolved" ] && $bb ping -c 1 -W 5 "$resolved" >/dev/null 2>&1; then
			pass "$launcher/$guest: the host pings $name"
		else
			fail "$launcher/$guest: the host does not reach $name at '$resolved'"
		fi
		# -p 8080:80: a server in the guest, a client in another guest's
		# network namespace connecting to the host's own address.
		systemd-run -q -M "$name" --unit=n13-http $bb sh -c \
			"while true; do echo hello-from-$name | $bb nc -l -p 80 >/dev/null; done"
		echo "  $launcher/$guest: port map: $(nft list map ip io.systemd.nat map_port_ipport 2>&1 | grep -o 'tcp . 8080 : [0-9.]* . 80')"
		client=net-${launcher:0:2}-client
		cdir=$(net_tree "$launcher" bookworm client)
		server_pid=$launcher_pid
		if net_start "$launcher" "$client" -D "$cdir" -b -n --bind-ro="$bb:$bb"; then
			client_pid=$launcher_pid
			until_ok 60 has_ipv4 "$client"
			gw=$(machinectl shell -q "$client" $bb sh -c "$bb ip route | $bb awk '/^default/ { print \$3 }'" 2>/dev/null | tr -d '\r' | head -n 1)
			answer=
			for _ in $(seq 20); do
				answer=$(machinectl shell -q "$client" $bb sh -c "$bb nc -w 2 $gw 8080 </dev/null" 2>/dev/null | tr -d '\r' | head -n 1)
				[ -n "$answer" ] && break
				sleep 0.5
			done
			if [ "$answer" = "hello-from-$name" ]; then
				pass "$launcher/$guest: -p 8080:80 answers from another namespace (via $gw:8080)"
			else
				fail "$launcher/$guest: -p 8080:80 from $client via '$gw': '$answer'"
			fi
			launcher_pid=$client_pid
			net_stop "$client"
		fi
		rm -rf "$cdir"
		launcher_pid=$server_pid
		net_stop "$name"
		rm -rf "$dir"
		if [ "$launcher" = nixspawn ]; then
			if [ -z "$ve" ]; then
				fail "$launcher/$guest: machinectl named no Iface"
			elif until_ok 10 bash -c "! $bb ip link show '$ve' >/dev/null 2>&1"; then
				pass "$launcher/$guest: $ve gone after exit"
			else
				fail "$launcher/$guest: $ve left: $($bb ip link show | grep ve-)"
			fi
		fi
	done
	if diff -u "$out/net-nspawn-$guest.facts" "$out/net-nixspawn-$guest.facts"; then
		pass "$guest: machinectl's Iface:/Address: agree between systemd-nspawn and nixspawn"
	else
		fail "$guest: machinectl's network fields differ (diff above)"
	fi
done

say "networking: two nixspawn guests on one zone"
za=$(net_tree nixspawn bookworm za)
zb=$(net_tree nixspawn sid zb)
if net_start nixspawn net-za -D "$za" -b --network-zone=n13 --bind-ro="$bb:$bb"; then
	za_pid=$launcher_pid
	if net_start nixspawn net-zb -D "$zb" -b --network-zone=n13 --bind-ro="$bb:$bb"; then
		zb_pid=$launcher_pid
		until_ok 60 has_ipv4 net-za
		until_ok 60 has_ipv4 net-zb
		a=$(ipv4_of net-za)
		b=$(ipv4_of net-zb)
		echo "  zone vz-n13: net-za $a, net-zb $b; bridge ports: $(ls /sys/class/net/vz-n13/brif 2>/dev/null | tr '\n' ' ')"
		if machinectl shell -q net-za $bb ping -c 1 -W 5 "$b" >/dev/null 2>&1 &&
			machinectl shell -q net-zb $bb ping -c 1 -W 5 "$a" >/dev/null 2>&1; then
			pass "zone: net-za ($a) and net-zb ($b) reach each other"
		else
			fail "zone: net-za ($a) and net-zb ($b) do not reach each other"
		fi
		launcher_pid=$zb_pid
		net_stop net-zb
	fi
	launcher_pid=$za_pid
	net_stop net-za
	if until_ok 10 bash -c "! $bb ip link show vz-n13 >/dev/null 2>&1"; then
		pass "zone: vz-n13 removed after its last guest"
	else
		fail "zone: vz-n13 left behind"
	fi
fi
rm -rf "$za" "$zb"

# nixos-container with privateNetwork = true, hostAddress and localAddress:
# its start script runs the launcher with these flags, its postStart
# addresses ve-NAME on the host, and the guest's container-init renames
# host0 to eth0 and addresses it. The host's networkd leaves ve-nc-* alone
# (run.sh), as a NixOS host's scripted networking does.
say "networking: the NixOS toplevel with nixos-container's privateNetwork argv"
for launcher in nspawn nixspawn; do
	name=nc-${launcher:0:2}
	if ! net_start "$launcher" "$name" -D "$nixos_state" --bind-ro=/nix/store \
		--kill-signal=SIGRTMIN+3 --private-network --network-veth \
		--setenv PRIVATE_NETWORK=1 --setenv HOST_ADDRESS=10.233.1.1 \
		--setenv LOCAL_ADDRESS=10.233.1.2 "$NIXOS_SYSTEMD/init"; then
		continue
	fi
	leader=$(leader_of "$name")
	# postStart, on the host:
	$bb ip link set "ve-$name" up
	$bb ip addr add 10.233.1.1 dev "ve-$name"
	$bb ip route add 10.233.1.2 dev "ve-$name"
	# container-init, in the guest's network namespace:
	nsenter -t "$leader" -n sh -c "$bb ip link set host0 name eth0 && $bb ip link set eth0 up &&
		$bb ip addr add 10.233.1.2 dev eth0 && $bb ip route add 10.233.1.1 dev eth0 &&
		$bb ip route add default via 10.233.1.1"
	{
		# Without the peer's index (@ifN), which counts the host's links.
		echo "guest links: $(nsenter -t "$leader" -n $bb ip -o link | $bb awk '{ sub(/@if[0-9]+/, "@ifN", $2); print $2 }' | tr '\n' ' ')"
		echo "guest addresses: $(nsenter -t "$leader" -n $bb ip -o -4 addr | $bb awk '{ print $2, $4 }' | tr '\n' ' ')"
		echo "guest routes: $(nsenter -t "$leader" -n $bb ip route | tr '\n' ';')"
		echo "host side: $($bb ip -o -4 addr show dev "ve-$name" | $bb awk '{ print $4 }')"
	} | sed "s/$name/NAME/g" >"$out/nc-$launcher.facts"
	sed "s/^/  $launcher: /" "$out/nc-$launcher.facts"
	if $bb ping -c 1 -W 5 10.233.1.2 >/dev/null 2>&1; then
		pass "nixos-container/$launcher: the host reaches localAddress 10.233.1.2"
	else
		fail "nixos-container/$launcher: 10.233.1.2 does not answer"
	fi
	net_stop "$name"
done
if diff -u "$out/nc-nspawn.facts" "$out/nc-nixspawn.facts"; then
	pass "nixos-container: the guest sees the same under both launchers"
else
	fail "nixos-container: the guest's network differs (diff above)"
fi
