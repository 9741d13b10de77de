package tests

import (
	"strings"
	"testing"
)

// lockbox run --allow/--deny/--secret: the flags make the same policy and
// secrets as the SDK options (TestNetworkPolicy, TestNetworkSecret cover
// the rules themselves). Control: the same command reaches the host the
// flags allow.
func TestNetworkCLIFlags(t *testing.T) {
	lab := newNetLab(t)
	A, B := lab.A.String(), lab.B.String()
	api := "api." + labZone
	fetch := "wget -q -O- http://" + api + "/; echo; printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 " + B + " 8080; echo"
	r := cli(t, 0, "run", "--allow", api+":80", "--allow", B+":8080/tcp", "base", "--", "sh", "-c", fetch)
	if !strings.Contains(r.stdout, "hello-from-"+A+":80") || !strings.Contains(r.stdout, "hello-from-"+B+":8080") {
		t.Fatalf("control: allowed by flags: %v", r)
	}
	r = cli(t, 0, "run", "--allow", api+":80", "--deny", B, "--allow", B+":8080/tcp", "base", "--", "sh", "-c", fetch)
	if !strings.Contains(r.stdout, "hello-from-"+A+":80") || strings.Contains(r.stdout, "hello-from-"+B) {
		t.Fatalf("EGRESS: --deny %s did not win over --allow: %v", B, r)
	}
	r = runCLI(t, "", []string{"LBX_TEST_KEY=sk-from-the-host-env"}, "run", "--allow", api+":443",
		"--secret", "LBX_TEST_KEY@"+api, "base", "--", "sh", "-c", `printf %s "$LBX_TEST_KEY"`)
	if r.code != 0 || !placeholderRE.MatchString(r.stdout) || strings.Contains(r.stdout+r.stderr, "sk-from-the-host-env") {
		t.Fatalf("--secret: %v", r)
	}
	r = cli(t, 2, "run", "--network", "outbound", "--allow", api, "base", "--", "true")
	if !strings.Contains(r.stderr, "one or the other") {
		t.Fatalf("--network outbound with --allow: %v", r)
	}
}
