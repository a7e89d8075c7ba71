// Starting points for a tenant's policy, offered by the Access controls page's
// Templates menu. Each is commented HuJSON that the server's check accepts on
// any tenant (test/console/policy.test.ts checks them): their tests name
// hosts and addresses, not users or nodes a tenant may not have.

export interface PolicyTemplate {
  name: string;
  description: string;
  text: string;
}

const BASIC = `// Basic: every member's devices reach each other; servers are tagged and
// reachable on SSH and HTTPS only. Add users to group:admins to manage tags.
{
  "groups": {
    // logins or emails of the people who manage servers, e.g. "alice@example.com"
    "group:admins": [],
  },

  // Who may apply each tag to a node.
  "tagOwners": {
    "tag:server": ["group:admins"],
  },

  "acls": [
    // Members reach all devices of all members.
    { "action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:member:*"] },
    // Members reach servers on SSH and HTTPS.
    { "action": "accept", "src": ["autogroup:member"], "dst": ["tag:server:22,443"] },
    // Admins reach everything.
    { "action": "accept", "src": ["group:admins"], "dst": ["*:*"] },
  ],

  "hosts": {
    // A name for an address (a printer on a router's subnet, say).
    "printer": "192.168.1.20",
  },

  // Expectations checked on every check and save.
  "tests": [
    // A device outside every group reaches no server.
    { "src": "192.168.1.20", "deny": ["100.64.0.1:22"] },
  ],
}
`;

const ENTERPRISE = `// Enterprise: three roles.
//   admin     — everything, and owns every tag
//   developer — development servers and the dev subnet, production on HTTPS only
//   intern    — development web servers only
// Put people's logins or emails into the groups.
{
  "groups": {
    "group:admin": [],
    "group:developer": [],
    "group:intern": [],
  },

  "tagOwners": {
    "tag:prod": ["group:admin"],
    "tag:dev": ["group:admin", "group:developer"],
    "tag:ci": ["group:admin"],
  },

  "hosts": {
    "prod-net": "10.10.0.0/16",
    "dev-net": "10.20.0.0/16",
    "build-cache": "10.20.5.10",
  },

  "acls": [
    // admin: the whole network
    { "action": "accept", "src": ["group:admin"], "dst": ["*:*"] },
    // developer
    { "action": "accept", "src": ["group:developer"], "dst": ["tag:dev:*", "dev-net:*", "tag:prod:443"] },
    // intern
    { "action": "accept", "src": ["group:intern"], "dst": ["tag:dev:80,443"] },
    // CI deploys over SSH
    { "action": "accept", "src": ["tag:ci"], "dst": ["tag:dev:22", "tag:prod:22"] },
    // machines on the dev subnet use the build cache
    { "action": "accept", "src": ["dev-net"], "dst": ["build-cache:443"] },
  ],

  // Lets admins SSH into servers as root after a fresh check.
  "ssh": [
    { "action": "check", "src": ["group:admin"], "dst": ["tag:prod", "tag:dev"], "users": ["root", "autogroup:nonroot"] },
  ],

  "tests": [
    // The dev subnet reaches the build cache on HTTPS, nothing else.
    { "src": "10.20.1.7", "accept": ["build-cache:443"], "deny": ["build-cache:22", "10.10.0.5:5432"] },
  ],
}
`;

const HOME_LAB = `// Home lab: your devices reach everything, including the home LAN through
// a subnet router and the internet through an exit node; guests reach the
// media server only.
{
  "groups": {
    // your login or email, e.g. "me@example.com"
    "group:family": [],
    "group:guests": [],
  },

  "tagOwners": {
    "tag:router": ["group:family"],
    "tag:media": ["group:family"],
  },

  "hosts": {
    "home-lan": "192.168.1.0/24",
    "nas": "192.168.1.10",
  },

  // Routes and exit nodes of tagged routers are approved as they are announced.
  "autoApprovers": {
    "routes": { "192.168.1.0/24": ["tag:router"] },
    "exitNode": ["tag:router"],
  },

  "acls": [
    { "action": "accept", "src": ["group:family"], "dst": ["*:*", "home-lan:*", "autogroup:internet:*"] },
    { "action": "accept", "src": ["group:guests"], "dst": ["tag:media:8096"] },
    // the NAS backs up to the media box
    { "action": "accept", "src": ["nas"], "dst": ["tag:media:22"] },
  ],

  "tests": [
    { "src": "nas", "deny": ["192.168.1.11:445"] },
  ],
}
`;

const BLANK = `// An empty policy. While it has no "acls" and no "grants", every node
// reaches every other; the first rule added restricts that.
{
  "groups": {},
  "tagOwners": {},
  "hosts": {},
}
`;

export const TEMPLATES: PolicyTemplate[] = [
  { name: 'Basic', description: 'members reach each other; tagged servers on SSH and HTTPS', text: BASIC },
  { name: 'Enterprise', description: 'admin, developer and intern roles; prod and dev tags', text: ENTERPRISE },
  { name: 'Home lab', description: 'your devices, the home LAN through a router, an exit node, guests', text: HOME_LAB },
  { name: 'Blank', description: 'an empty policy to start from', text: BLANK },
];
