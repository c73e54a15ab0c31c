// A real OpenID provider for the tests (tests/identity/test_oidc.py): panva's oidc-provider (OpenID
// Certified), issuing JWT access tokens by the client credentials grant. Configured by environment:
// PORT, KEYS_FILE (a JWKS with private keys; the first signs), CLIENTS (JSON: client_id,
// client_secret, scope, and optionally customer_id, sent as the store_customer_id claim), AUDIENCE
// (the one resource indicator it issues tokens for), TTL (seconds). Keys rotate by a restart with a
// new file, as a provider's keys do.
import { readFileSync } from 'node:fs';
import Provider, { errors } from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const audience = process.env.AUDIENCE;
const clients = JSON.parse(process.env.CLIENTS);
const jwks = JSON.parse(readFileSync(process.env.KEYS_FILE, 'utf8'));
const ttl = Number(process.env.TTL || 300);

const provider = new Provider(issuer, {
  clients: clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    scope: c.scope,
    token_endpoint_auth_method: 'client_secret_post',
    id_token_signed_response_alg: jwks.keys[0].alg,
  })),
  jwks,
  scopes: ['read', 'write', 'admin'],
  // Swagger UI asks for a token from the browser (tests/project/test_browser.py): any origin may.
  clientBasedCORS: () => true,
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => audience,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, indicator) => {
        if (indicator !== audience) throw new errors.InvalidTarget();
        return {
          scope: 'read write admin',
          audience,
          accessTokenTTL: ttl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: jwks.keys[0].alg } },
        };
      },
    },
  },
  extraTokenClaims: async (_ctx, token) => {
    const client = clients.find((c) => c.client_id === token.clientId);
    return client && client.customer_id ? { store_customer_id: client.customer_id } : undefined;
  },
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
