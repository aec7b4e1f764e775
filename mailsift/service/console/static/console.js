// mailsift console: the little script it has. Everything works without it.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // A new token's secret is selected when focused, ready to copy.
  for (const field of document.querySelectorAll("[data-select-on-focus]")) {
    field.addEventListener("focus", () => field.select());
  }
  // "/" jumps to the first search field (as many consoles do), unless typing already.
  document.addEventListener("keydown", (event) => {
    const typing = event.target.closest("input, select, textarea");
    if (event.key === "/" && !typing) {
      const search = document.querySelector("form[role=search] input");
      if (search) { event.preventDefault(); search.focus(); }
    }
  });
});
