// docker-mirror status page: refresh, admin actions, copy buttons.
// Plain JavaScript, no framework. Everything shown comes from the server's
// escaped HTML or is set with textContent.
"use strict";

(function () {
  const notice = document.getElementById("notice");
  const refreshEvery = 5000;

  // saidDown: the notice shown is down's, which an answered refresh takes
  // away; any other (an action's refusal) stays.
  let saidDown = false;
  function say(text, isError) {
    saidDown = false;
    notice.textContent = text;
    notice.className = isError ? "error" : "";
    notice.hidden = false;
  }

  // A refresh that got no answer (the mirror down, or restarting behind a
  // proxy's 502) says so, until the next one is answered: the figures
  // shown are the last answer's, the upstreams "ok" among them.
  // A refresh the mirror answered with an error (its own 500, an auth
  // proxy's 401 once the session ran out) says what it got instead: the
  // mirror is not down.
  let answeredAt = new Date();
  function down(e) {
    const shown = "the figures shown are from " + answeredAt.toLocaleTimeString() + ".";
    if (e instanceof Answered) {
      say("The mirror answered " + e.message + "; " + shown, true);
    } else {
      say("No answer from the mirror (" + e.message + "): " + shown, true);
    }
    saidDown = true;
  }

  // reasons are the reason phrases of the answers a mirror, or a proxy in
  // front of it, gives the page: HTTP/2 (serve --tls-cert) has none, so
  // resp.statusText is empty there.
  const reasons = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
    429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout", 507: "Insufficient Storage",
  };

  // statusLine is resp's status and reason phrase ("401 Unauthorized"),
  // over HTTP/1.1 and HTTP/2 alike.
  function statusLine(resp) {
    return (resp.status + " " + (resp.statusText || reasons[resp.status] || "")).trim();
  }

  // Answered is a refresh's error answer, as the mirror (or a proxy in
  // front of it that answered in its place) gave it.
  class Answered extends Error {}

  // failure is the error of a refresh answered resp (not ok): a gateway's
  // 502, 503 or 504 without the mirror's error body is no answer from the
  // mirror (down, or restarting); any other is its answer, with the
  // message of its error body if it has one.
  async function failure(resp) {
    const status = statusLine(resp);
    let msg = "";
    try {
      const data = JSON.parse(await resp.text());
      if (data.errors && data.errors.length && data.errors[0].message) {
        msg = data.errors[0].message;
      }
    } catch (e) {
      // not the mirror's error body
    }
    if (!msg && [502, 503, 504].includes(resp.status)) {
      return new Error(status);
    }
    return new Answered(msg ? status + ": " + msg : status);
  }

  // refresh re-reads the page and swaps in its live part (health,
  // upstreams, downloads, jobs, failures); the image list and forms stay.
  // It throws if the page was not answered.
  async function refresh(all) {
    const url = new URL(location.href);
    if (!all) {
      url.searchParams.set("live", "1"); // the live part only: the image list is not read
    }
    const resp = await fetch(url, { headers: { Accept: "text/html" }, cache: "no-store" });
    if (!resp.ok) {
      const images = document.getElementById("images");
      if (all && resp.status === 404 && images) {
        // An image's page after its repository's last image went
        // (evicted): the page answers 404, nothing of it is left to show.
        const none = document.createElement("p");
        none.className = "none";
        none.textContent = "Nothing of this repository is cached any more.";
        images.replaceChildren(none);
        return;
      }
      throw await failure(resp);
    }
    const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
    const ids = all ? ["live", "images", "uptime"] : ["live", "uptime"];
    for (const id of ids) {
      const now = document.getElementById(id);
      const next = doc.getElementById(id);
      if (now && next) {
        now.replaceWith(document.adoptNode(next));
      }
    }
    answeredAt = new Date();
    if (saidDown) {
      saidDown = false;
      notice.hidden = true;
    }
  }

  // One auto-refresh at a time: an answer can be slow (a destination
  // check, a first image list), and refreshes piling up would take the
  // browser's connections to the mirror, the actions' too.
  const auto = document.getElementById("autorefresh");
  let refreshing = false;
  setInterval(function () {
    if (!refreshing && auto && auto.checked && document.visibilityState === "visible") {
      refreshing = true;
      refresh(false).catch(down).finally(function () { refreshing = false; });
    }
  }, refreshEvery);

  // The admin actions answer JSON; an error body is the registry's
  // {"errors": [{"message": ...}]}.
  async function post(url, body) {
    const resp = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const data = await resp.json().catch(function () { return {}; });
    if (!resp.ok) {
      const msg = data.errors && data.errors.length ? data.errors[0].message : statusLine(resp);
      throw new Error(msg);
    }
    return data;
  }

  document.addEventListener("click", async function (ev) {
    const copy = ev.target.closest("button[data-copy]");
    if (copy) {
      const text = copy.dataset.copy;
      try {
        await navigator.clipboard.writeText(text);
        say("Copied " + text, false);
      } catch (e) {
        say(text, false); // no clipboard (plain HTTP): shown to copy by hand
      }
      return;
    }
    const btn = ev.target.closest("button[data-action]");
    if (!btn) {
      return;
    }
    const row = btn.closest("[data-digest]");
    const action = btn.dataset.action;
    const image = { upstream: row.dataset.upstream, repo: row.dataset.repo, digest: row.dataset.digest };
    if (action === "evict" && !confirm("Evict " + image.upstream + "/" + image.repo + "@" + image.digest + "?")) {
      return;
    }
    btn.disabled = true;
    try {
      await post("/api/v1/actions/" + action, image);
      say(action + ": done for " + image.upstream + "/" + image.repo, false);
    } catch (e) {
      say(action + " failed: " + e.message, true);
      btn.disabled = false;
      return;
    }
    await refresh(true).catch(down);
  });

  const form = document.getElementById("prefetch-form");
  if (form) {
    form.addEventListener("submit", async function (ev) {
      ev.preventDefault();
      const words = function (s) { return s.split(/[\s,]+/).filter(Boolean); };
      const req = { images: words(form.elements.images.value) };
      const platforms = words(form.elements.platforms.value);
      if (platforms.length) {
        req.platforms = platforms;
      }
      if (form.elements.pin.checked) {
        req.pin = true;
      }
      try {
        const job = await post("/prefetch", req);
        say("Prefetch job " + job.id + " started (" + req.images.length + " images)", false);
        form.reset();
      } catch (e) {
        say("Prefetch refused: " + e.message, true);
        return;
      }
      await refresh(false).catch(down);
    });
  }
})();
