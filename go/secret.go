package lockbox

import (
	"fmt"
	"slices"
	"strings"

	"lockbox.dev/lockbox/internal/wire"
)

// WithSecret hands the sandbox a credential it can use but never read.
// Inside, $name holds a random placeholder ("lockbox-secret-" and 32 hex
// digits); on the way out, in the credential headers of HTTP requests to
// one of hosts, Lockbox replaces the placeholder with value. The real
// value never enters the sandbox: not its environment, files or memory.
//
// The credential headers are Authorization and Proxy-Authorization (any
// scheme; Basic credentials are decoded, substituted and encoded again)
// and the API-key headers of the common APIs: X-Api-Key, Api-Key, Apikey,
// X-Goog-Api-Key, Ocp-Apim-Subscription-Key, X-Functions-Key,
// Private-Token, X-RapidAPI-Key, DD-API-KEY, DD-APPLICATION-KEY,
// X-Vault-Token, X-Auth-Token, X-Access-Token, X-Api-Token.
// WithSecretHeaders adds others for one secret. The placeholder anywhere
// else (another header, the URL; bodies are not read) goes out unchanged
// and is a NetworkEvent of kind EventSecret: servers send headers such as
// Origin, Referer or X-Forwarded-Host back, and the value would come back
// with them.
//
// A request with a body is the last one on its connection (Lockbox sends
// it with "Connection: close" and resets the connection if the sandbox
// sends another request on it), so a server that misreads where a body
// ends cannot take a later request, value included, for that body.
// HTTP clients open a new connection on their own.
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
// characters (it ends up in an HTTP header line); hosts are exact domain
// names (no "*.": below a shared suffix such as azurewebsites.net live
// other customers' names, each with a valid certificate).
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

// WithSecretHeaders names headers besides the credential ones (see
// WithSecret) where the secret called name is substituted, for an API
// that takes its key in a header of its own. It must follow that
// WithSecret. Name only headers the server does not send back: a header
// it reflects brings the real value into the sandbox. At most 16; a
// header that frames or routes the request (Host, Content-Length,
// Transfer-Encoding, Connection, ...) is refused.
func WithSecretHeaders(name string, headers ...string) Option {
	return func(c *sandboxConfig) {
		i := slices.IndexFunc(c.Secrets, func(s wire.Secret) bool { return s.Name == name })
		err := error(nil)
		switch {
		case i < 0:
			err = fmt.Errorf("WithSecretHeaders %q: no WithSecret of that name before it", name)
		case len(headers) == 0:
			err = fmt.Errorf("WithSecretHeaders %q: no headers", name)
		}
		for _, h := range headers {
			if err == nil && !validHeaderName(h) {
				err = fmt.Errorf("WithSecretHeaders %q: %q is not a header name", name, h)
			}
		}
		if err != nil {
			c.refuse(usageError("sandbox.create", err.Error(), nil))
			return
		}
		c.Secrets[i].Headers = append(c.Secrets[i].Headers, headers...)
	}
}

// validHeaderName: an HTTP token (RFC 9110); the engine checks the rest.
func validHeaderName(h string) bool {
	if h == "" || len(h) > 64 {
		return false
	}
	for _, c := range h {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("!#$%&'*+-.^_`|~", c)) {
			return false
		}
	}
	return true
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
		if strings.HasPrefix(h, "*") {
			return s, fmt.Errorf("WithSecret %q: host %q: an exact name, not a wildcard (below a shared suffix live other customers' names)", name, h)
		}
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
