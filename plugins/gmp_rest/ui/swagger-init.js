// Swagger UI of /docs. Every URL is relative to the page, so the page also works behind a
// reverse proxy that serves the API under a path prefix, and nothing comes from elsewhere.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    // The default validator badge would send our document to validator.swagger.io.
    validatorUrl: null,
    // A ?url= or ?configUrl= in the page address may not load another document.
    queryConfigEnabled: false,
  });
});
