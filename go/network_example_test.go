package lockbox_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"

	"lockbox.dev/lockbox"
)

// A sandbox that may install packages from PyPI and nothing else: names
// outside these rules get NXDOMAIN, other addresses a reset.
func ExampleWithNetworkPolicy() {
	ctx := context.Background()
	policy := lockbox.NewNetworkPolicy(
		lockbox.Allow("pypi.org").Port(443),
		lockbox.Allow("*.pythonhosted.org").Port(443),
	)
	sb, err := lockbox.CreateSandbox(ctx, lockbox.WithImage("python"), lockbox.WithNetworkPolicy(policy))
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Remove(ctx)
	res, err := sb.Exec(ctx, "pip", "install", "--user", "requests")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("pip exit", res.ExitCode)
}

// A policy as a struct literal: the same rules as the constructors build.
func ExampleNetworkPolicy_literal() {
	policy := lockbox.NetworkPolicy{Rules: []lockbox.NetworkRule{
		{Action: lockbox.ActionAllow, Domain: "api.example.com", Ports: []lockbox.PortRange{{First: 443, Last: 443}}},
		{Action: lockbox.ActionAllow, CIDR: "10.9.0.0/24", Protocol: lockbox.TCP},
		{Action: lockbox.ActionDeny, Preset: lockbox.NonPublic},
	}}
	fmt.Println(policy.Validate())
	for _, r := range policy.Rules {
		fmt.Println(r)
	}
	// Output:
	// <nil>
	// allow domain api.example.com ports 443
	// allow cidr 10.9.0.0/24 tcp
	// deny preset non-public
}

// Validate reports the first bad rule, as CreateSandbox would.
func ExampleNetworkPolicy_Validate() {
	policy := lockbox.NewNetworkPolicy(
		lockbox.Allow("api.example.com"),
		lockbox.Allow("*.cdn.*.example.com"),
	)
	err := policy.Validate()
	fmt.Println(errors.Is(err, lockbox.ErrInvalidArgument))
	fmt.Println(err)
	// Output:
	// true
	// lockbox: network policy: rule 1: domain "*.cdn.*.example.com": '*' is not allowed in a name (a-z 0-9 - _; a wildcard only as a leading "*.") (invalid_argument)
}

// Public internet only, as plain NetworkOutbound, but with the denials
// visible and one internal service opened by address.
func ExampleAllowPreset() {
	policy := lockbox.NewNetworkPolicy(
		lockbox.AllowPreset(lockbox.PublicInternet),
		lockbox.Allow("10.20.0.5").Port(5432).TCP(),
		lockbox.Deny("tracker.example.com"),
	)
	fmt.Println(policy.Validate())
	// Output: <nil>
}

// Rules change on a running sandbox: new connections see them at once.
func ExampleSandbox_SetNetworkPolicy() {
	ctx := context.Background()
	sb, err := lockbox.CreateSandbox(ctx, lockbox.WithNetworkPolicy(lockbox.NewNetworkPolicy(
		lockbox.Allow("pypi.org").Port(443),
	)))
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Remove(ctx)
	// Setup done: from now on only the API, not the package index.
	err = sb.SetNetworkPolicy(ctx, lockbox.NewNetworkPolicy(
		lockbox.Allow("api.example.com").Port(443),
	))
	if err != nil {
		log.Fatal(err)
	}
}

// Every refusal is an event with the rule that refused it.
func ExampleSandbox_NetworkEvents() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sb, err := lockbox.CreateSandbox(ctx, lockbox.WithNetworkPolicy(lockbox.NewNetworkPolicy(
		lockbox.Allow("api.example.com").Port(443),
	)))
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Remove(ctx)
	events, err := sb.NetworkEvents(ctx)
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		for ev := range events {
			if ev.Dropped > 0 {
				log.Printf("%d network events lost", ev.Dropped)
			}
			log.Printf("refused %s %s %v:%d (%s)", ev.Kind, ev.Name, ev.IP, ev.Port, ev.Rule)
		}
	}()
	_, _ = sb.Exec(ctx, "wget", "-q", "-O-", "http://example.org/")

	m, err := sb.Metrics(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("denied DNS queries:", m.Network.DNSDenied)
}

// The program inside uses $OPENAI_API_KEY as usual but only ever holds a
// placeholder; the real key is put into the request on its way to
// api.openai.com, and nowhere else.
func ExampleWithSecret() {
	ctx := context.Background()
	sb, err := lockbox.CreateSandbox(ctx,
		lockbox.WithImage("python"),
		lockbox.WithNetworkPolicy(lockbox.NewNetworkPolicy(lockbox.Allow("api.openai.com").Port(443))),
		lockbox.WithSecret("OPENAI_API_KEY", os.Getenv("OPENAI_API_KEY"), "api.openai.com"),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Remove(ctx)
	res, err := sb.Exec(ctx, "sh", "-c", `echo "$OPENAI_API_KEY" | cut -c1-15`)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s", res.Stdout) // lockbox-secret-
}
