package lockbox

import (
	"fmt"
	"strings"

	"lockbox.dev/lockbox/internal/wire"
)

// WithSecret hands the sandbox a credential it can use but never read.
// Inside, $name holds a random placeholder ("lockbox-secret-" and 32 hex
// digits); on the way out, in HTTP request headers (Authorization, Basic
// auth, any other header) of requests to one of hosts, Lockbox replaces
// the placeholder with value. The real value never enters the sandbox:
// not its environment, files or memory.
//
// To see those headers Lockbox intercepts TLS to hosts (and only to
// them): the sandbox trusts a certificate authority made for it alone
// (installed in its trust store, with SSL_CERT_FILE, REQUESTS_CA_BUNDLE,
// NODE_EXTRA_CA_CERTS and CURL_CA_BUNDLE pointing at it), and Lockbox
// verifies the real host's certificate itself. Connections to every other
// host stay end-to-end TLS. A placeholder sent anywhere else goes out
// unchanged and is a NetworkEvent of kind EventSecret.
//
// It needs WithNetworkPolicy, and every host must be allowed by that
// policy (else CreateSandbox fails with ErrInvalidArgument). name must be
// a valid environment variable name; value may not hold control
// characters (it ends up in an HTTP header line); hosts are domain names.
func WithSecret(name, value string, hosts ...string) Option {
	return func(c *sandboxConfig) {
		s, err := secret(name, value, hosts)
		if err == nil {
			for _, o := range c.Secrets {
				if o.Name == name {
					err = fmt.Errorf("WithSecret %q: given twice", name)
				}
			}
		}
		if err != nil {
			c.refuse(usageError("sandbox.create", err.Error(), nil))
			return
		}
		c.Secrets = append(c.Secrets, s)
	}
}

func secret(name, value string, hosts []string) (wire.Secret, error) {
	s := wire.Secret{Name: name, Value: value}
	if !validSecretName(name) {
		return s, fmt.Errorf("WithSecret name %q: must be an environment variable name (letters, digits, '_', not starting with a digit)", name)
	}
	if value == "" {
		return s, fmt.Errorf("WithSecret %q: empty value", name)
	}
	if strings.IndexFunc(value, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
		// The value is written into a request header: a CR or LF would
		// end the header and let the value add headers of its own.
		return s, fmt.Errorf("WithSecret %q: the value holds a control character (it is sent in an HTTP header)", name)
	}
	if len(hosts) == 0 {
		return s, fmt.Errorf("WithSecret %q: no hosts (name the hosts the real value may be sent to)", name)
	}
	for _, h := range hosts {
		if looksLikeAddress(h) {
			return s, fmt.Errorf("WithSecret %q: host %q: a domain name, not an address (the name is what TLS verifies)", name, h)
		}
		d, err := normalDomain(h)
		if err != nil {
			return s, fmt.Errorf("WithSecret %q: host: %v", name, err)
		}
		s.Hosts = append(s.Hosts, d)
	}
	return s, nil
}

func validSecretName(name string) bool {
	if name == "" || len(name) > 256 || name[0] >= '0' && name[0] <= '9' {
		return false
	}
	for _, c := range name {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}
