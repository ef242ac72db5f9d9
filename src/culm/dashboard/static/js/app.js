// The dashboard's shell: sign-in, the hash router, and the pages it mounts.
import { api, h, toast, whenUnauthorized } from "./lib.js";

// Each page's module is loaded when it is first shown: a first visit fetches only what its page needs.
const ROUTES = [
  [/^#\/runs\/([^/]+)$/, () => import("./run.js"), "render", "#/runs"],
  [/^#\/runs$/, () => import("./runs.js"), "render", "#/runs"],
  [/^#\/sessions\/([^/]+)$/, () => import("./sessions.js"), "renderOne", "#/sessions"],
  [/^#\/sessions$/, () => import("./sessions.js"), "render", "#/sessions"],
  [/^#\/schedules$/, () => import("./schedules.js"), "render", "#/schedules"],
  [/^#\/usage$/, () => import("./usage.js"), "render", "#/usage"],
  [/^#\/mcp$/, () => import("./system.js"), "renderMcp", "#/mcp"],
  [/^#\/workers$/, () => import("./system.js"), "renderWorkers", "#/workers"],
];

const main = document.getElementById("main");
const signOut = document.getElementById("sign-out");
let cleanup = null;
let shown = 0; // which route() call may draw: a later one wins over a slower earlier one
let auth = { auth: false, signed_in: true };

async function route() {
  if (cleanup) { cleanup(); cleanup = null; }
  const mine = ++shown;
  if (!auth.signed_in) return showSignIn();
  const hash = location.hash || "#/runs";
  for (const [pattern, load, name, nav] of ROUTES) {
    const match = hash.match(pattern);
    if (!match) continue;
    for (const a of document.querySelectorAll(".top nav a")) {
      if (a.getAttribute("href") === nav) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    const page = await load();
    if (mine !== shown) return;
    main.replaceChildren();
    cleanup = page[name](main, ...match.slice(1).map(decodeURIComponent)) || null;
    return;
  }
  location.hash = "#/runs";
}

function showSignIn(message) {
  shown += 1; // a page still loading must not draw over the form
  signOut.hidden = true;
  const key = h("input", { type: "password", name: "api_key", autocomplete: "current-password", required: true });
  const problem = h("p.error", { role: "alert", text: message || "" });
  const form = h("form", {
    onsubmit: async (event) => {
      event.preventDefault();
      try {
        await api("/dashboard/session", { method: "POST", body: { api_key: key.value } });
        auth = { auth: true, signed_in: true };
        signOut.hidden = false;
        route();
      } catch (error) {
        problem.textContent = error.message;
        key.select();
      }
    },
  },
    h("h1", { text: "Sign in" }),
    h("p.muted", { text: "This server has an API key (CULM_API_KEY). Enter it to open the dashboard." }),
    h("label", {}, "API key", key),
    problem,
    h("button.primary", { type: "submit", text: "Sign in" }),
  );
  main.replaceChildren(h("section.signin.panel", {}, form));
  key.focus();
}

whenUnauthorized(() => {
  if (!auth.auth || !auth.signed_in) return;
  auth = { auth: true, signed_in: false };
  if (cleanup) { cleanup(); cleanup = null; }
  showSignIn("Your sign-in expired: sign in again.");
});

signOut.addEventListener("click", async () => {
  await api("/dashboard/session", { method: "DELETE" }).catch(() => {});
  auth = { auth: true, signed_in: false };
  route();
});

async function start() {
  // The page is drawn at once (a server without a key answers its API calls); a server that
  // wants a key answers them 401 until the browser signs in, and the session check says so.
  window.addEventListener("hashchange", route);
  route();
  try {
    const known = await api("/dashboard/session");
    if (!known.signed_in && auth.signed_in) {
      auth = known;
      route();
    }
    auth = known;
  } catch (error) {
    toast("The server did not answer: " + error.message, true);
  }
  signOut.hidden = !(auth.auth && auth.signed_in);
}
start();
